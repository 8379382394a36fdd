"""Ablation of the funnel winner: a useless term and switch are dropped, useful ones kept; resumable; readable."""

from __future__ import annotations

import dataclasses

import hashlib

import optuna
import pytest

from optsearch.genome import Genome
from optsearch.search import ablation

UNITS = [("digits", s) for s in (11, 12, 13, 14)]


def noise(unit: tuple[str, int], salt: str = "") -> float:
    h = hashlib.sha256(f"{unit}/{salt}".encode()).digest()
    return (int.from_bytes(h[:4], "little") / 2**32 - 0.5) * 0.02


def synthetic(genome: Genome, unit: tuple[str, int]) -> float:
    """Known truth: the adam (+0.2) and momentum (+0.1) terms and cosine decay (+0.05) help; sign_grad,
    warmup and bias correction do nothing.

    Seed noise (±0.01) is shared by all members of a unit, as paired seeds are; a tiny per-genome part
    (±0.0005) keeps the intervals honest (a useless part's effect is noise around zero, not exactly 0).
    """
    terms = genome.merged_terms()
    return (0.5 + 0.2 * ("adam" in terms) + 0.1 * ("momentum" in terms) + 0.05 * genome.cosine_decay + noise(unit)
            + 0.05 * noise(unit, str(sorted(genome.to_params().items()))))


class Runner:
    def __init__(self, fail_after: int | None = None):
        self.calls: list[tuple[int, tuple[str, int]]] = []
        self.fail_after = fail_after

    def __call__(self, genomes, unit):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt
        self.calls.append((len(genomes), unit))
        return [synthetic(g, unit) for g in genomes]


WINNER = Genome(terms=("adam", "sign_grad", "momentum", "none"), alphas=(1.0, 0.3, 0.5, 0.0), lr_log10=-2.5,
                warmup=True, cosine_decay=True, bias_correction=True)


def new_study(tmp_path) -> optuna.Study:
    return optuna.create_study(study_name="a", storage=f"sqlite:///{tmp_path}/a.db", direction="maximize")


def test_components_remove_terms_and_neutralise_switches():
    labels = [label for label, _ in ablation.components(WINNER)]
    assert labels == ["term adam (α 1)", "term sign_grad (α 0.3)", "term momentum (α 0.5)", "bias correction",
                      "warmup", "cosine decay"]
    only = Genome.named("adam")
    assert [label for label, _ in ablation.components(only)] == ["bias correction"]  # the last term never goes


def test_removing_a_sign_term_clears_its_gene():
    """AddSign/PowerSign live in the sign_term gene, not in the slots: removing it must clear that gene."""
    g = dataclasses.replace(WINNER, sign_term="add_sign", sign_alpha=0.7)
    variants = dict(ablation.components(g))
    without = variants["term add_sign (α 0.7)"]
    assert without.sign_term == "none" and "add_sign" not in without.merged_terms()
    assert without.terms == g.terms  # the slot terms stay


def test_ablation_drops_a_useless_term_and_switch_and_keeps_useful_ones(tmp_path):
    st = new_study(tmp_path)
    runner = Runner()
    result = ablation.run(st, WINNER, UNITS, runner, reference=Genome.named("adam"))
    simple = result.genome
    assert set(simple.merged_terms()) == {"adam", "momentum"}  # sign_grad dropped, the useful terms kept
    assert simple.cosine_decay and not simple.warmup and not simple.bias_correction
    rows = {r.component.split(" (")[0]: r for r in result.rows}
    assert rows["term sign_grad"].dropped and rows["warmup"].dropped and rows["bias correction"].dropped
    assert not rows["term adam"].dropped and rows["term adam"].effect.hi < 0 and rows["term momentum"].effect.hi < 0
    assert not rows["cosine decay"].dropped and rows["cosine decay"].effect.mean == pytest.approx(-0.05, abs=0.005)
    # the first step also trained the reference on the same units: simplified − Adam ≈ +0.15 (momentum, cosine decay)
    assert result.vs_reference().mean == pytest.approx(0.15, abs=0.005) and result.vs_reference().sign == 1
    assert runner.calls[0] == (1 + 6 + 1, UNITS[0])  # genome + 6 variants + the reference, one population
    text = "\n".join(ablation.summary(result))
    assert "simplified: " + simple.formula() in text and "| term adam (α 1) |" in text and "dropped at step" in text
    # read() replays the same decisions from the stored scores, without training
    assert ablation.read(st) == result


def test_a_killed_ablation_resumes_where_it_stopped(tmp_path):
    st = new_study(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        ablation.run(st, WINNER, UNITS, Runner(fail_after=6))  # dies inside the second step
    assert ablation.read(st) is None
    rest = Runner()
    result = ablation.run(st, WINNER, UNITS, rest)
    assert len(rest.calls) == sum(1 for _ in range(result.steps) for _ in UNITS) - 6
    assert result == ablation.run(st, WINNER, UNITS, Runner(fail_after=0))  # finished: nothing trains again


def noisy_warmup(genome: Genome, unit: tuple[str, int]) -> float:
    """Warmup is worth +0.02 on average, but its per-unit effect swings by ±0.06: with 4 paired runs its
    removal's interval reaches zero (not shown useful) without being shown harmless."""
    swing = noise(unit, "warmup") * 6
    return synthetic(genome, unit) + (0.02 + swing) * genome.warmup


def test_a_part_not_shown_harmless_is_kept(tmp_path):
    def runner(genomes, unit):
        return [noisy_warmup(g, unit) for g in genomes]

    kept = ablation.run(new_study(tmp_path), WINNER, UNITS, runner)
    row = next(r for r in kept.rows if r.component == "warmup")
    assert row.effect.hi >= 0 and row.effect.lo < -ablation.MARGIN  # noisy: neither shown useful nor harmless
    assert kept.genome.warmup and not row.dropped
    assert "kept: not shown harmless" in "\n".join(ablation.summary(kept))
    assert not kept.genome.bias_correction and "sign_grad" not in kept.genome.merged_terms()  # shown harmless: gone
    # the rule of an ablation stored before the margin (its interval reaches zero) drops it
    assert ablation.harmless(row.effect, None) and not ablation.harmless(row.effect, ablation.MARGIN)


def test_a_resumed_ablation_keeps_the_rule_it_started_with(tmp_path):
    st = new_study(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        ablation.run(st, WINNER, UNITS, Runner(fail_after=6), margin=0.5)
    result = ablation.run(st, WINNER, UNITS, Runner())  # the default margin now: the stored 0.5 still rules
    assert result.margin == 0.5 and ablation.read(st) == result
