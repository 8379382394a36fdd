"""Ablation of the funnel winner: a useless term and switch are dropped, useful ones kept; resumable; readable."""

from __future__ import annotations

import dataclasses
import hashlib
import math

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
    assert labels == ["the update rule → Adam's", "term adam (α 1)", "term sign_grad (α 0.3)",
                      "term momentum (α 0.5)", "bias correction", "warmup", "cosine decay"]
    only = Genome.named("adam")
    assert [label for label, _ in ablation.components(only)] == ["bias correction"]  # the last term never goes
    # the rule → Adam's keeps the recipe and the step size (α's sum moves into the lr); β, ε → Adam's defaults
    odd = dataclasses.replace(WINNER, beta1_log1m=-0.5, eps_log10=-6.0, clip="norm", clip_threshold=0.3)
    parts = dict(ablation.components(odd))
    rule = parts["the update rule → Adam's"]
    assert rule.merged_terms() == {"adam": 1.0} and rule.recipe() == odd.recipe()
    assert rule.lr_log10 == pytest.approx(odd.lr_log10 + math.log10(1.8))
    consts = parts["β1, β2, ε → Adam's defaults"]
    adam = Genome.named("adam")
    assert (consts.beta1, consts.beta2, consts.eps) == (adam.beta1, adam.beta2, adam.eps)
    assert consts.merged_terms() == odd.merged_terms()
    assert "the update rule → Adam's" not in dict(ablation.components(odd, rule_parts=False))


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
    # genome + 7 variants, each at 3 lrs of its re-sweep, + the reference: one population
    assert runner.calls[0] == (1 + 7 * len(ablation.LR_SWEEP) + 1, UNITS[0])
    assert result.holm and result.margin == ablation.MARGIN <= 0.003
    text = "\n".join(ablation.summary(result))
    assert "simplified: " + simple.formula() in text and "| term adam (α 1) |" in text and "dropped at step" in text
    # read() replays the same decisions from the stored scores, without training
    assert ablation.read(st) == result


def test_a_later_step_trains_neither_the_current_genome_nor_a_part_shown_to_hurt(tmp_path):
    """Step 0 shows that removing adam, momentum, cosine decay or the rule costs more than the margin; later
    steps keep them untested (their row is step 0's), and the current genome's scores are the previous
    step's (it was measured there as the variant that was dropped)."""
    st = new_study(tmp_path)
    runner = Runner()
    result = ablation.run(st, WINNER, UNITS, runner)
    sizes = [n for n, unit in runner.calls if unit == UNITS[0]]
    sweep = len(ablation.LR_SWEEP)
    # step 0: the genome + 7 parts; step 1: the 2 harmless parts left; step 2: the last one
    assert sizes == [1 + 7 * sweep, 2 * sweep, 1 * sweep] and result.steps == 3
    rows = {r.component.split(" (")[0]: r for r in result.rows}
    for part in ("term adam", "term momentum", "cosine decay", "the update rule → Adam's"):
        assert rows[part].step == 0 and not rows[part].dropped and rows[part].effect.hi < -ablation.MARGIN
    assert "| term adam (α 1) | -0.2" in "\n".join(ablation.summary(result)).replace("−", "-")
    # an ablation stored before carrying replays by its own rule: every step trained everything again
    head = st.user_attrs[f"{ablation.PREFIX}0"]
    assert head["carry"] is True and ablation._protocol({**head, "carry": None})["carry"] is False


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


def test_holm_correction_keeps_a_part_that_only_passes_uncorrected():
    """Three parts tested in one step: each one-sided test at 2.5 % alone would let the borderline one go;
    Holm's step-down (2.5 %/3, then /2, then /1) does not."""
    from optsearch import stats

    base = [0.0] * 8
    clear = stats.paired_difference([0.001 + 0.0002 * (k % 2) for k in range(8)], base)  # p ≈ 0
    # a borderline part: its one-sided p-value lies between 2.5 %/3 and 2.5 %
    spread = [-0.0005, 0.0035, -0.0025, 0.0015, -0.0035, 0.0025, -0.0015, 0.0005]
    border = stats.paired_difference([-0.0008 + d for d in spread], base)  # p ≈ 0.019: between 2.5 %/2 and 2.5 %
    noisy = stats.paired_difference([-0.003 + 0.002 * (-1) ** k for k in range(8)], base)  # not harmless at all
    uncorrected = [ablation.harmless(e, 0.003) for e in (clear, border, noisy)]
    corrected = ablation.holm_harmless([clear, border, noisy], 0.003)
    assert uncorrected == [True, True, False] and corrected == [True, False, False]


def test_a_winner_that_is_adam_plus_a_recipe_simplifies_to_adam_with_the_recipe(tmp_path):
    """Truth: only the recipe (warmup) and the step size matter, best at lr 10^-2.75 for any rule. The rule →
    Adam's is shown harmless at its best lr of the re-sweep and goes; the recipe stays; the final check on fresh
    seeds reports simplified − unsimplified."""

    def truth(g: Genome, unit) -> float:
        step = g.lr_log10 + math.log10(sum(g.merged_terms().values()))
        return (0.7 + 0.05 * g.warmup - 0.1 * (step + 2.75) ** 2 + noise(unit)
                + 0.02 * noise(unit, str(sorted(g.to_params().items()))))

    winner = Genome(terms=("adam", "adam", "sign_grad", "none"), alphas=(1.0, 0.5, 0.02, 0.0), lr_log10=-2.75,
                    warmup=True, warmup_frac=0.2)
    units = [("digits", s) for s in range(20, 28)]
    fresh = [("digits", s) for s in range(40, 48)]
    calls = []

    def runner(genomes, unit):
        calls.append(unit)
        return [truth(g, unit) for g in genomes]

    st = new_study(tmp_path)
    result = ablation.run(st, winner, units, runner, final_units=fresh)
    assert result.genome.merged_terms() == {"adam": 1.0} and result.genome.warmup  # Adam + the recipe
    assert any(r.component == "the update rule → Adam's" and r.dropped for r in result.rows)
    assert not any(r.component == "warmup" and r.dropped for r in result.rows)
    assert result.final_diff is not None and result.final_diff.n == len(fresh)
    assert set(calls[-len(fresh):]) == set(fresh)  # the check ran on the fresh seeds, after the steps
    text = "\n".join(ablation.summary(result))
    assert f"on {len(fresh)} fresh runs simplified − unsimplified" in text and "Holm-corrected" in text
    assert ablation.read(st) == result  # replayed from storage, the final check included


def test_a_shared_recipe_is_not_ablated(tmp_path):
    """With ``recipe = "shared"`` warmup, cosine decay and clipping were never searched: no variant, no cost;
    the choice is stored with the steps, so a replay (``read``) rebuilds the same components."""
    g = dataclasses.replace(WINNER, clip="norm", clip_threshold=0.5)
    shared = [label for label, _ in ablation.components(g, shared_recipe=True)]
    assert "warmup" not in shared and "cosine decay" not in shared and "clipping" not in shared
    assert "bias correction" in shared and "the update rule → Adam's" in shared
    assert {"warmup", "cosine decay", "clipping"} <= {label for label, _ in ablation.components(g)}
    st = new_study(tmp_path)
    runner = Runner()
    result = ablation.run(st, g, UNITS, runner, shared_recipe=True)
    assert runner.calls[0][0] == 1 + len(shared) * len(ablation.LR_SWEEP)
    assert not {"warmup", "cosine decay", "clipping"} & {r.component for r in result.rows}
    assert ablation.read(st) == result
