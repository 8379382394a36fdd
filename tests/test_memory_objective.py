"""Optimizer memory as an objective (issue 27, item 2): the state size, the study's objectives, the front's figures."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
import torch

from optsearch.genome import NAMED, Genome, define_search_space
from optsearch.genome import primitives
from optsearch.genome.primitives import NONE
from optsearch.optim import GenomeOptimizer
from optsearch.search.config import MEMORY_OBJECTIVE, StudyConfig
from optsearch.search.generations import scalar_fitness
from optsearch.search.noise import MEASURED_ATTR
from optsearch.search.sampler import GAConfig, GENERATION_KEY, MEMBER_KEY

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _allocated(genome: Genome) -> int:
    """Floats per parameter GenomeOptimizer really keeps for ``genome`` after one step (its 'step' count aside)."""
    p = torch.nn.Parameter(torch.ones(5))
    opt = GenomeOptimizer([p], genome, total_steps=10)
    p.grad = torch.full_like(p, 0.5)
    opt.step()
    return sum(t.numel() for k, t in opt.state[p].items() if k != "step") // p.numel()


@pytest.mark.parametrize("name,floats", [("sgd", 0), ("sgd_momentum", 1), ("signum", 1), ("lion", 1), ("rmsprop", 1),
                                         ("adam", 2), ("adamw", 2), ("paper_evolved", 2)])
def test_state_floats_is_what_the_optimizer_allocates(name, floats):
    g = NAMED[name]
    assert g.state_floats() == floats == _allocated(g)


@pytest.mark.parametrize("term", list(primitives.PRIMITIVES))
def test_every_primitive_declares_the_state_it_keeps(term):
    """A primitive added later (AdEMAMix's slow EMA, Adan's g-difference EMA, …) is counted only through its
    ``needs``: what the optimizer keeps for it must be exactly that."""
    g = Genome.single(term)
    assert g.state_floats() == len(primitives.PRIMITIVES[term].needs) == _allocated(g)


def test_only_active_terms_count_and_the_registry_decides():
    inactive = Genome(terms=("adam", "momentum", NONE, NONE), alphas=(0.0, 1.0, 0.0, 0.0))  # Adam's α is 0
    assert inactive.state_floats() == 1 == _allocated(inactive)
    mixed = Genome(terms=("lion", "adam", NONE, NONE), alphas=(1.0, 0.5, 0.0, 0.0))  # μ, m and v
    assert mixed.state_floats() == 3 == _allocated(mixed)
    assert dataclasses.replace(NAMED["sgd"], sign_term="add_sign", sign_alpha=1.0).state_floats() == 1  # reads m


def test_a_primitive_declaring_more_state_is_counted_without_touching_the_genome(monkeypatch):
    """A slow EMA added later declares its buffer in ``needs``; the count follows from the registry alone."""
    slow = dataclasses.replace(primitives.PRIMITIVES["momentum"], needs=frozenset({"m", "m_slow"}))
    monkeypatch.setitem(primitives.PRIMITIVES, "momentum", slow)
    assert NAMED["sgd_momentum"].state_floats() == 2


def _cfg(objective: str, **sampler) -> StudyConfig:
    return StudyConfig.from_dict({"tasks": ["digits", "mnist1d"], "population": 6, "generations": 1,
                                  "objective": objective, "sampler": sampler})


def test_memory_objectives_are_the_fitness_objectives_then_the_state_minimised():
    agg = _cfg("aggregate+memory")
    assert agg.memory and not agg.per_task
    assert agg.objective_names == ["fitness", MEMORY_OBJECTIVE] and agg.directions == ["maximize", "minimize"]
    per = _cfg("per_task+memory")
    assert per.per_task and per.objective_names == ["digits", "mnist1d", MEMORY_OBJECTIVE]
    assert per.directions == ["maximize", "maximize", "minimize"]
    assert _cfg("aggregate").directions == ["maximize"] and not _cfg("per_task").memory
    # generation 0 holds the zero-state end of the front: plain SGD beside the 1- and 2-float baselines
    seeded = [g.state_floats() for _, g in GAConfig.from_dict(agg.sampler).seed_genomes()]
    assert sorted(set(seeded)) == [0, 1, 2]
    assert "sgd" not in dict(GAConfig.from_dict(_cfg("aggregate").sampler).seed_genomes())
    assert "sgd" not in dict(GAConfig.from_dict(_cfg("aggregate+memory", seed_sgd=False).sampler).seed_genomes())


# ----------------------------------------------------------------------------- a told memory study
FRONT = [("sgd", 0.70), ("sgd_momentum", 0.60), ("rmsprop", 0.85), ("adam", 0.90), ("adamw", 0.80),
         ("lion", 0.88), ("signum", 0.50)]
"""(genome, fitness) told into the synthetic study; the front is sgd (0), lion (1), adam (2)."""


def memory_study(n_extra: int = 0, storage: str | None = None) -> optuna.Study:
    """An ``aggregate+memory`` study told as the worker tells it (fitness measured, state appended)."""
    cfg = _cfg("aggregate+memory")
    study = optuna.create_study(directions=cfg.directions, storage=storage, study_name="memory")
    study.set_metric_names(cfg.objective_names)
    study.set_user_attr("objectives", cfg.objective_names)
    for i, (name, fit) in enumerate(FRONT * (1 + n_extra)):
        g = NAMED[name]
        study.enqueue_trial(g.to_params())
        t = study.ask()
        define_search_space(t)
        study._storage.set_trial_system_attr(t._trial_id, GENERATION_KEY, i // len(FRONT))
        study._storage.set_trial_system_attr(t._trial_id, MEMBER_KEY, i % len(FRONT))
        t.set_user_attr("generation", i // len(FRONT))
        t.set_user_attr(MEASURED_ATTR, [fit])
        study.tell(t, [fit, float(g.state_floats())])
    return study


def test_best_means_best_fitness_never_least_memory():
    study = memory_study()
    best = max(study.get_trials(), key=scalar_fitness)
    assert scalar_fitness(best) == 0.90 and best.values == [0.90, 2.0]


def test_the_front_and_its_figures_show_fitness_against_state_floats(tmp_path):
    from optsearch.analysis.evolution import memory_front, read_members
    from optsearch.analysis.evolution_figures import search_figures_plotly, write_search_figures

    study = memory_study()
    members = read_members(study)
    assert all(m.values == (fit,) for m, (_, fit) in zip(members, FRONT))  # the state is no fitness value
    front = memory_front(members)
    assert [(m.genome.state_floats(), m.fitness) for m in front] == [(0, 0.70), (1, 0.88), (2, 0.90)]
    fig = search_figures_plotly(study, members)["pareto_memory"]
    all_members, front_trace = fig.data
    assert list(front_trace.x) == [0, 1, 2] and list(front_trace.y) == [0.70, 0.88, 0.90]
    assert list(front_trace.text) == ["0 floats", "1 float", "2 floats"] and len(all_members.x) == len(FRONT)
    assert "optimizer state" in fig.layout.xaxis.title.text
    paths = write_search_figures(study, tmp_path, members)
    png = tmp_path / "search_pareto_memory.png"
    assert png in paths and png.stat().st_size > 5_000
    from optsearch.analysis.report import search_markdown

    md = search_markdown(study, members, [p.name for p in paths])  # analyze's report.md: the front as a table
    table = md.split("### Accuracy–memory Pareto front")[1]
    assert "### Pareto front of generation" not in md  # one fitness objective: no fitness-vs-fitness front
    assert [line.split("|")[3].strip() for line in table.splitlines() if line.startswith("| ") and "`" in line] == \
        ["0", "1", "2"]
    assert "![search_pareto_memory](search_pareto_memory.png)" in table


def test_analysis_reads_a_memory_study_by_its_fitness():
    from optsearch.analysis.data import study_data

    d = study_data(memory_study(n_extra=1))  # 14 trials: enough for the analysis
    assert d.objective_names == ["fitness"] and not d.per_task
    assert sorted(set(d.y)) == sorted({f for _, f in FRONT}) and d.values.shape == (14, 1)


def test_a_study_run_tells_fitness_then_state_and_seeds_every_state_size(tmp_path):
    """`study create` + `study run` of one tiny generation: the worker tells (mean fitness, state floats), keeps
    the state out of the measured values, and generation 0 holds 0-, 1- and 2-float genomes."""
    from optsearch.cli import main
    from tests.test_dashboard import MEMORY_STUDY

    url = f"sqlite:///{tmp_path}/s.db"
    cfg = tmp_path / "m.toml"
    cfg.write_text(MEMORY_STUDY.replace("steps = 30", "steps = 5").replace("population = 8", "population = 5")
                   .replace('pruner = "percentile"\nwarmup_checkpoints = 1', 'pruner = "none"'))
    assert main(["study", "create", "m", "--config", str(cfg), "--storage", url]) == 0
    assert main(["study", "run", "m", "--storage", url, "--generations", "1", "--quiet"]) == 0
    study = optuna.load_study(study_name="m", storage=url)
    assert study.metric_names == ["fitness", MEMORY_OBJECTIVE]
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 5
    for t in done:
        state = Genome.from_params(t.params).state_floats()
        assert t.values == [t.user_attrs[MEASURED_ATTR][0], state] and len(t.user_attrs[MEASURED_ATTR]) == 1
    assert sorted({t.values[1] for t in done}) == [0.0, 1.0, 2.0]


# ----------------------------------------------------------------------------- in a browser
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Chromium not installed at /usr/bin/chromium")
def test_a_real_memory_study_shows_a_front_of_0_1_and_2_floats_in_chromium(tmp_path):
    """A tiny quick-like ``aggregate+memory`` study, run for real: its dashboard's Pareto-front card names a
    member of each state size on the front (the labels are the front trace's text, drawn as SVG)."""
    from playwright.sync_api import expect

    from tests.test_dashboard import make_memory_study
    from tests.test_dashboard_browser import TIMEOUT_MS, dashboard_page

    demo = make_memory_study(tmp_path)
    with dashboard_page(tmp_path, demo, 1400) as page:
        card = page.locator('[id="user-defined-plot:optsearch-search-pareto_memory"]')
        expect(card.locator(".main-svg").first).to_be_attached(timeout=TIMEOUT_MS)
        expect(card).to_contain_text("Accuracy–memory Pareto front")
        card.scroll_into_view_if_needed()
        labels = [s.strip() for s in card.locator(".textpoint").all_text_contents()]
        assert {"0 floats", "1 float", "2 floats"} <= set(labels), labels
