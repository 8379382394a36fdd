"""Seed-fair ranking (issue 23 item 4): one control member per batch on the generation's seeds; pruning, the best
trial and the funnel's candidates use each member's difference from its generation's control.

The evaluator is replaced by a synthetic one (no training): a genome's fitness is a known function of its genes
plus a per-generation seed difficulty, so "a generation drawn on hard seeds" is a fact of the test, not a draw.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from optsearch.genome import Genome
from optsearch.search import funnel
from optsearch.search.config import StudyConfig
from optsearch.search.control import CONTROL_ATTR, CONTROL_CURVE_ATTR, RELATIVE_ATTR, Controls, control_genome
from optsearch.search.generations import best_trials, generations, scalar_fitness
from optsearch.search.noise import genome_means, unit_seeds
from optsearch.search.worker import Worker
from optsearch.train import evaluate as evaluate_module
from optsearch.train.results import Checkpoint

optuna.logging.set_verbosity(optuna.logging.WARNING)
POP, GENS, CHECKPOINTS = 6, 4, 4
HARD = -0.3  # the seed difficulty of odd generations: every genome, the control included, scores 0.3 lower


def config(control: str = "adam", pruner: str = "median") -> StudyConfig:
    return StudyConfig.from_dict({"search": {"tasks": ["digits"], "population": POP, "generations": GENS, "seed": 3,
                                             "device": "cpu", "control": control},
                                  "pruning": {"pruner": pruner, "warmup_checkpoints": 0}})


def quality(g: Genome) -> float:
    """The genome's true quality: best at lr 10^-2.5, +0.02 with an Adam term (the control: lr 10^-3, Adam)."""
    return 0.6 - 0.1 * abs(g.lr_log10 + 2.5) + 0.02 * ("adam" in g.merged_terms())


class FakeEvaluate:
    """``evaluate`` with known answers: fitness = quality + the generation's seed difficulty, a curve rising to it
    over :data:`CHECKPOINTS` checkpoints; records every call's genomes."""

    def __init__(self, cfg: StudyConfig, diverge_control_in: int | None = None, hard: float = HARD):
        self.difficulty = {tuple(unit_seeds(cfg, g)): (hard if g % 2 else 0.0) for g in range(GENS)}
        self.generation = {tuple(unit_seeds(cfg, g)): g for g in range(GENS)}
        self.diverge_control_in = diverge_control_in
        self.calls: list[list[Genome]] = []

    def __call__(self, genomes, tasks, seeds, spec, *, callback=None):
        self.calls.append(list(genomes))
        n = len(genomes)
        final = [quality(g) + self.difficulty[tuple(seeds)] for g in genomes]
        bad = self.generation[tuple(seeds)] == self.diverge_control_in
        if bad:
            final[-1] = math.nan
        active, pruned = set(range(n)), set()
        for k in range(CHECKPOINTS):
            proxy = tuple(v * (k + 1) / CHECKPOINTS for v in final)
            cp = Checkpoint(unit_index=0, task="digits", seed=seeds[0], step=k, is_unit_end=k == CHECKPOINTS - 1,
                            active=tuple(sorted(active)), proxy_accuracy=proxy, proxy_fitness=proxy,
                            mean_fitness=(math.nan,) * n, diverged=(), num_units=1)
            for i in callback(cp) or ():
                active.discard(i)
                pruned.add(i)
        members = tuple(SimpleNamespace(
            fitness=math.nan if i in pruned else final[i], diverged=bad and i == n - 1, pruned=i in pruned,
            per_task={"digits": {"fitness": final[i], "accuracy": final[i], "loss": 0.5}}) for i in range(n))
        return SimpleNamespace(members=members, member_steps=(1,) * n, planned_steps=1)


def run(monkeypatch, cfg: StudyConfig, chunk: int = POP, **fake) -> tuple[optuna.Study, FakeEvaluate]:
    ev = FakeEvaluate(cfg, **fake)
    monkeypatch.setattr(evaluate_module, "evaluate", ev)
    study = optuna.create_study(directions=cfg.directions)
    Worker(study, cfg, device="cpu", data_dir=None, stop_generation=GENS, chunk=chunk, progress=False).loop()
    return study, ev


def test_every_batch_trains_the_control_last_and_it_is_no_trial(monkeypatch):
    cfg = config()
    study, ev = run(monkeypatch, cfg, chunk=4)  # 6 members a generation in batches of 4 and 2
    control = control_genome("adam", {})
    assert [len(c) for c in ev.calls] == [5, 3] * GENS and all(c[-1] == control for c in ev.calls)
    gens = generations(study)
    assert [len(gens[g]) for g in range(GENS)] == [POP] * GENS  # the control holds no member slot
    for g, ts in gens.items():
        expected = [quality(control) + (HARD if g % 2 else 0.0)]
        assert all(t.user_attrs[CONTROL_ATTR] == pytest.approx(expected) for t in ts)
        assert all(len(t.user_attrs[CONTROL_CURVE_ATTR]["fitness"]) == CHECKPOINTS for t in ts)
        for t in ts:
            if t.state == TrialState.COMPLETE and t.user_attrs["evaluations"] == 1:  # relative = own − control
                assert t.user_attrs[RELATIVE_ATTR][0] == pytest.approx(t.values[0] - expected[0])
                assert t.values[0] == pytest.approx(t.user_attrs["measured"][0])  # the told value stays raw


def test_the_study_is_the_same_whatever_the_batch_split(monkeypatch):
    def snapshot(study):
        return [(t.number, t.state, t.params, t.values, t.user_attrs.get(RELATIVE_ATTR), t.user_attrs[CONTROL_ATTR])
                for t in study.get_trials()]

    whole, _ = run(monkeypatch, config(), chunk=POP)
    split, _ = run(monkeypatch, config(), chunk=2)
    assert snapshot(whole) == snapshot(split)


def test_a_generation_on_hard_seeds_is_not_pruned_wholesale(monkeypatch):
    """Generation 1 scores 0.3 lower than on easy seeds: against raw earlier curves the median pruner stops all of
    it; against curves relative to each generation's control it stops exactly the members it stops on easy seeds
    (generation 1's genomes are bred from generation 0, which is the same in both)."""
    def states(control: str, hard: float) -> list:
        study, _ = run(monkeypatch, config(control=control), hard=hard)
        return [(t.params, t.state) for t in generations(study)[1]]

    assert [s for _, s in states("none", HARD)] == [TrialState.PRUNED] * POP
    assert [s for _, s in states("none", 0.0)].count(TrialState.COMPLETE) > 0
    assert states("adam", HARD) == states("adam", 0.0)


def test_best_trial_and_funnel_candidates_rank_by_difference_from_the_control(monkeypatch):
    study, _ = run(monkeypatch, config())
    done = study.get_trials(states=(TrialState.COMPLETE,))
    best = best_trials(study, 1)[0]
    assert sum(best.user_attrs[RELATIVE_ATTR]) == pytest.approx(max(sum(t.user_attrs[RELATIVE_ATTR]) for t in done))
    means = genome_means(study)  # relative: a genome's mean over its measurements less their generation's control
    assert means[0][1] == pytest.approx(max(quality(Genome.from_params(t.params)) for t in done)
                                        - quality(control_genome("adam", {})), abs=1e-9)
    assert funnel.candidates(study, 1)[0][0].number == means[0][0].number


def test_a_control_that_diverges_falls_back_to_the_studys_mean_control(monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="optsearch"):
        study, _ = run(monkeypatch, config(), diverge_control_in=2)
    assert "generation 2: the control diverged" in caplog.text
    gens = generations(study)
    assert all(t.user_attrs[CONTROL_ATTR] is None for t in gens[2])
    controls = Controls(study.get_trials())
    mean_control = sum(quality(control_genome("adam", {})) + (HARD if g % 2 else 0.0) for g in (0, 1, 3)) / 3
    assert controls.fallback == pytest.approx([mean_control])
    t = next(t for t in gens[2] if t.state == TrialState.COMPLETE)
    assert controls.offset(t, 1) == pytest.approx([mean_control])


def test_without_a_control_nothing_changes(monkeypatch):
    study, ev = run(monkeypatch, config(control="none"))
    assert all(len(c) == POP for c in ev.calls)
    assert not any(CONTROL_ATTR in t.user_attrs or RELATIVE_ATTR in t.user_attrs for t in study.get_trials())
    assert not Controls(study.get_trials()).present


def test_old_study_without_controls_ranks_by_raw_fitness(tmp_path):
    db = tmp_path / "s.db"
    shutil.copy(Path(__file__).parent / "fixtures" / "study_v0.db", db)
    url = f"sqlite:///{db}"
    for name in optuna.get_all_study_names(url):
        study = optuna.load_study(study_name=name, storage=url)
        done = study.get_trials(states=(TrialState.COMPLETE,))
        assert done and not Controls(done).present
        assert scalar_fitness(best_trials(study, 1)[0]) == max(map(scalar_fitness, done))
        assert genome_means(study)  # funnel candidates still rank (by raw means)


def test_study_show_ranks_the_top_genomes_relative_to_the_control(monkeypatch, tmp_path):
    from optsearch.search import show
    from optsearch.search.storage import CONFIG_ATTR

    cfg = config()
    study, _ = run(monkeypatch, cfg)
    url = f"sqlite:///{tmp_path}/s.db"
    optuna.copy_study(from_study_name=study.study_name, from_storage=study._storage, to_storage=url, to_study_name="c")
    optuna.load_study(study_name="c", storage=url).set_user_attr(CONFIG_ATTR, cfg.to_dict())
    text = show.show_text("c", storage=url)
    assert "genomes by fitness less their generation's control" in text
    best = best_trials(study, 1)[0]
    assert f"#{best.number} (gen" in text.split("genomes by fitness less")[1].splitlines()[1]


def test_the_dashboards_winner_is_the_best_relative_to_the_control(monkeypatch):
    """Without a funnel, the search figures' winner (lineage, anatomy) is the study's best as ranked against its
    generation's control, not the raw maximum, which mixes seed difficulty with quality."""
    from optsearch.analysis.evolution import best_member, read_members, winner_member

    study, _ = run(monkeypatch, config(), hard=0.1)  # odd generations drawn on easy seeds
    members = read_members(study)
    best = best_trials(study, 1)[0]
    assert winner_member(study, members).number == best.number
    assert best_member(members).number != best.number  # the raw maximum is another trial here
