"""The search as pictures, checked on real small studies (`study create` + `study run`, tiny budgets).

Every figure's data is checked against what the study stores, computed here independently: the lineage
against the sampler's parent records, the generation counts against trial states, the Pareto fronts by
dominance, the winner's parts against its genome.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

from optsearch import Genome
from optsearch.analysis.evolution import (
    SPARK,
    STATES,
    anatomy,
    best_member,
    fronts_by_generation,
    generation_summary_text,
    generations,
    lineage,
    read_members,
    sparkline,
)
from optsearch.analysis.evolution_figures import (
    CURVE_X,
    CURVE_Y,
    GRAPH_PREFIX,
    NO_CURVES,
    anatomy_plotly,
    anatomy_png,
    lineage_plotly,
    save_search_figures,
    search_figures_plotly,
    write_search_figures,
)
from optsearch.analysis.report import analyze_study
from optsearch.cli import main

CONFIG = """
[search]
tasks = {tasks}
seeds = [0]
steps = 20
population = {population}
generations = 3
checkpoint_every = 10
seed = 5
device = "cpu"
objective = "{objective}"
[pruning]
pruner = "{pruner}"
[sampler]
"""
PNG = b"\x89PNG\r\n\x1a\n"
URLS: dict[str, str] = {}


def run_study(root: Path, name: str, *, tasks: list[str], objective: str, population: int) -> str:
    root.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{root / 's.db'}"
    cfg = root / f"{name}.toml"
    # Optuna allows no intermediate values with several objectives, so a per-task study prunes by "chance".
    pruner = "chance" if objective == "per_task" else "median"
    cfg.write_text(CONFIG.format(tasks=json.dumps(tasks), objective=objective, population=population, pruner=pruner))
    URLS[name] = url
    assert main(["study", "create", name, "--config", str(cfg), "--storage", url]) == 0
    assert main(["study", "run", name, "--storage", url, "--quiet"]) == 0
    return url


@pytest.fixture(scope="module")
def per_task(tmp_path_factory) -> optuna.Study:
    """A real 3-generation per-task study on digits and mnist1d (NSGA-II ranking), population 8."""
    url = run_study(tmp_path_factory.mktemp("evo"), "pt", tasks=["digits", "mnist1d"], objective="per_task",
                    population=8)
    return optuna.load_study(study_name="pt", storage=url)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> optuna.Study:
    """A real 3-generation single-objective study on digits and mnist1d, population 6 (median pruner: curves
    stored, two tasks' checkpoints numbered in one sequence)."""
    url = run_study(tmp_path_factory.mktemp("evo1"), "one", tasks=["digits", "mnist1d"], objective="aggregate",
                    population=6)
    return optuna.load_study(study_name="one", storage=url)


def stored_parents(study: optuna.Study) -> dict[int, list[int]]:
    return {t.number: list(t.system_attrs.get("GeneticSampler:parents") or []) for t in study.get_trials()}


def ancestors(parents: dict[int, list[int]], root: int) -> set[int]:
    seen, todo = set(), [root]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo += parents[n]
    return seen


# ----------------------------------------------------------------------------- lineage
@pytest.mark.parametrize("which", ["per_task", "single"])
def test_lineage_nodes_are_the_ancestors_and_edges_the_stored_parents(which, request):
    study = request.getfixturevalue(which)
    members = read_members(study)
    best = best_member(members)
    finished = [t for t in study.get_trials() if t.state == TrialState.COMPLETE and not t.user_attrs.get("diverged")]
    assert best.fitness == pytest.approx(max(np.mean(t.values) for t in finished))
    parents = stored_parents(study)
    lin = lineage(members)
    assert set(lin.nodes) == ancestors(parents, best.number)
    assert {(p, c) for p, c, _ in lin.edges} == {(p, c) for c in lin.nodes for p in parents[c]}
    for p, c, origin in lin.edges:
        assert origin == study.trials[c].system_attrs["GeneticSampler:origin"]
        assert lin.nodes[p].generation < lin.nodes[c].generation
    assert not lin.missing
    # the figure draws exactly those: one marker per node, one segment per edge
    fig = lineage_plotly(lin)
    nodes = [t for t in fig.data if t.name == "ancestor"]
    assert len(nodes) == 1 and len(nodes[0].x) == len(lin.nodes)
    segments = sum(sum(x is None for x in t.x) for t in fig.data if t.mode == "lines")
    assert segments == len(lin.edges)
    assert any(best.formula in s for s in nodes[0].text)


def test_lineage_reaches_back_to_generation_zero(single):
    lin = lineage(read_members(single))
    best = lin.nodes[lin.roots[0]]
    if best.generation > 0:  # a child has parents, and they lead back to the first generation
        assert min(m.generation for m in lin.nodes.values()) == 0 and lin.edges


# ----------------------------------------------------------------------------- generations
@pytest.mark.parametrize("which", ["per_task", "single"])
def test_generation_counts_match_trial_states(which, request):
    study = request.getfixturevalue(which)
    gs = generations(read_members(study))
    trials = study.get_trials()
    gen_of = {t.number: t.system_attrs["GeneticSampler:generation"] for t in trials}
    assert gs.generation.tolist() == sorted(set(gen_of.values())) == [0, 1, 2]
    for i, g in enumerate(gs.generation):
        mine = [t for t in trials if gen_of[t.number] == g]
        diverged = sum(bool(t.user_attrs.get("diverged")) for t in mine)
        assert gs.counts["diverged"][i] == diverged
        assert gs.counts["complete"][i] == sum(t.state == TrialState.COMPLETE and not t.user_attrs.get("diverged")
                                               for t in mine)
        assert gs.counts["pruned"][i] == sum(t.state == TrialState.PRUNED and not t.user_attrs.get("diverged")
                                             for t in mine)
        assert gs.counts["failed"][i] == sum(t.state == TrialState.FAIL for t in mine)
        assert sum(gs.counts[s][i] for s in STATES) == len(mine)
        assert len(gs.fitness[i]) == gs.counts["complete"][i]
        genomes = [Genome.from_params(t.params) for t in mine]
        assert gs.terms["adam"][i] == pytest.approx(np.mean(["adam" in x.merged_terms() for x in genomes]))
    assert np.all(np.diff(gs.best_so_far) >= 0)
    # the dashboard's box plot carries one point per complete member
    fig = search_figures_plotly(study)["generations"]
    boxes = [t for t in fig.data if t.type == "box"]
    assert [len(b.y) for b in boxes] == gs.counts["complete"].tolist()


def test_generation_summary_text(per_task):
    members = read_members(per_task)
    gs = generations(members)
    text = generation_summary_text(per_task)
    lines = text.splitlines()
    assert lines[0].startswith("generations 0–2")
    best = next(line for line in lines if line.strip().startswith("best"))
    spark = best.split()[1]
    assert len(spark) == 3 and set(spark) <= set(SPARK) and spark == sparkline(gs.best)
    assert f"{np.nanmax(gs.best):.4f}" in best
    for state in ("complete", "pruned", "diverged"):
        row = next(line for line in lines if line.strip().startswith(state))
        assert [int(x) for x in row.split()[1:]] == gs.counts[state].tolist()


def test_study_show_prints_the_generation_summary(per_task, capsys):
    capsys.readouterr()
    assert main(["study", "show", "pt", "--storage", URLS["pt"]]) == 0
    out = capsys.readouterr().out
    assert generation_summary_text(per_task) in out and "best fitness per generation" in out


def test_sparkline_scales_and_marks_missing():
    assert sparkline([0, 1, 2]) == "▁▅█" and sparkline([1, 1]) == "▁▁" and sparkline([np.nan, 1.0]) == " ▁"


# ----------------------------------------------------------------------------- Pareto and the winner
def test_fronts_are_non_dominated_within_each_generation(per_task):
    members = read_members(per_task)
    fronts = fronts_by_generation(members)
    assert sorted(fronts) == [0, 1, 2]
    for g, front in fronts.items():
        done = [m for m in members if m.generation == g and m.values]
        for m in front:
            assert not any(np.all(np.array(o.values) >= m.values) and np.any(np.array(o.values) > m.values) for o in done)
        for o in done:
            if o not in front:
                assert any(np.all(np.array(m.values) >= o.values) for m in front)
    fig = search_figures_plotly(per_task)["pareto"]
    last = [t for t in fig.data if t.name.startswith("front of gen 2")]
    assert len(last) == 1 and len(last[0].x) == len(fronts[2])
    assert all(m.formula in " ".join(last[0].text) for m in fronts[2])


def test_winner_anatomy_and_curves(single, per_task):
    members = read_members(single)
    an = anatomy(single, members)
    win = best_member(members)
    assert an.winner.number == win.number
    terms = win.genome.merged_terms()
    assert [p for p, w, *_ in an.parts if w is not None] == list(terms)
    assert [w for _, w, *_ in an.parts if w is not None] == pytest.approx(list(terms.values()))
    done = sum(m.fitness is not None for m in members)
    assert all(n_with + n_without == done for *_, n_with, n_without in an.parts)
    stored = single.trials[win.number].intermediate_values
    assert sorted(stored) == [0, 1, 2, 3]  # 2 checkpoints (steps 10, 20) × 2 tasks, numbered as one sequence
    mine = [c for c in an.curves if c.label == f"winner #{win.number}"]
    # split back into the tasks' own runs: digits' checkpoints first, then mnist1d's, each at steps 10 and 20
    assert [(c.task, c.seed, c.steps) for c in mine] == [("digits", 0, [10, 20]), ("mnist1d", 0, [10, 20])]
    assert [v for c in mine for v in c.values] == pytest.approx([stored[s] for s in sorted(stored)])
    assert any(c.label.startswith("Adam seed") and c.label.endswith("(untuned)") for c in an.curves)
    # a per-task study stores no intermediate values: the figure says so instead of drawing nothing
    assert anatomy(per_task, read_members(per_task)).curves == []
    fig = search_figures_plotly(per_task)["winner"]
    assert any("no training curves stored" in a.text for a in fig.layout.annotations)


def test_winner_curves_one_labelled_panel_per_task(single):
    """search_winner.png and the dashboard card: a panel per task with labelled axes, no line across tasks."""
    an = anatomy(single, read_members(single))
    fig = anatomy_png(an)
    panels = fig.axes[1:]
    assert [a.get_title() for a in panels] == ["digits", "mnist1d"]
    for a in panels:
        assert a.get_xlabel() == CURVE_X and a.get_ylabel() == CURVE_Y
        assert a.get_lines() and all(max(line.get_xdata()) <= 20 for line in a.get_lines())  # steps of one run
        assert {t.get_text() for t in a.get_legend().get_texts()} == {c.label for c in an.curves}
    card = anatomy_plotly(an).to_plotly_json()["layout"]
    assert [card[f"xaxis{i}"]["title"]["text"] for i in (2, 3)] == [CURVE_X, CURVE_X]
    assert [card[f"yaxis{i}"]["title"]["text"] for i in (2, 3)] == [CURVE_Y, CURVE_Y]
    lines = [t for t in anatomy_plotly(an).data if t.type == "scatter"]
    assert {t.xaxis for t in lines} == {"x2", "x3"} and all(max(t.x) <= 20 for t in lines)


# ----------------------------------------------------------------------------- outputs
def test_the_winner_is_the_funnel_winner_when_a_funnel_ran(single, monkeypatch):
    """The proxy maximum is one lucky draw: with a funnel round, the anatomy and lineage follow its winner."""
    from types import SimpleNamespace

    from optsearch.analysis import evolution
    from optsearch.analysis.evolution import winner_lineage, winner_member

    members = read_members(single)
    best = best_member(members)
    assert winner_member(single, members) is best  # no funnel in this study
    other = next(m for m in members if m.fitness is not None and m.number != best.number)
    monkeypatch.setattr(evolution, "final_round", lambda study: SimpleNamespace(winner=SimpleNamespace(number=other.number)))
    assert anatomy(single, members).winner.number == other.number
    assert winner_lineage(single, members).roots == [other.number]


def test_pngs_report_and_dashboard_cards(per_task, tmp_path):
    paths = write_search_figures(per_task, tmp_path)
    assert {p.name for p in paths} == {"search_generations.png", "search_lineage.png", "search_pareto.png",
                                       "search_winner.png"}
    assert all(p.read_bytes()[:8] == PNG and p.stat().st_size > 10_000 for p in paths)
    ids = save_search_figures(per_task)
    assert ids == [GRAPH_PREFIX + n for n in ("generations", "population", "lineage", "pareto", "winner")]
    stored = get_plotly_graph_objects(per_task._storage.get_study_system_attrs(per_task._study_id))
    assert set(ids) <= set(stored)
    assert json.loads(stored[GRAPH_PREFIX + "lineage"])["layout"]["title"]["text"].startswith("Lineage of the best")



def test_search_pngs_fix_their_legends_and_keep_labels_out_of_the_layout(per_task):
    """A GA winner has hundreds of ancestors: an annotation per link laid out, or a legend placed "best"
    (which measures every label), took 44 s for one lineage PNG of a 2,500-trial study."""
    from optsearch.analysis.evolution_figures import _build, generations_png, lineage_png

    figs = _build(per_task, None, {"generations": generations_png, "lineage": lineage_png,
                                   "pareto": lambda *a: None, "winner": lambda *a: None})
    lin = figs["lineage"].axes[0]
    labels = [t for t in lin.texts if t.get_text().startswith("#")]
    assert labels and not any(t.get_in_layout() for t in labels)
    assert len(lin.collections) <= 2 + 3  # one scatter per marker and one arrow field per operator, not one per link
    for fig in (figs["generations"], figs["lineage"]):
        assert all(a.get_legend() is None or a.get_legend()._loc != 0 for a in fig.axes)  # 0: "best"


def test_analyze_writes_the_search_section(per_task, tmp_path):
    out = tmp_path / "report"
    analyze_study("pt", storage=URLS["pt"], out_dir=out, dashboard=False)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## The search" in report and "### Lineage of the best genome" in report
    assert "(search_lineage.png)" in report and "### Pareto front of generation 2" in report
    assert NO_CURVES in report
    assert (out / "search_lineage.png").read_bytes()[:8] == PNG


# ----------------------------------------------------------------------------- the live dashboard
def test_dashboard_redraws_the_search_figures_when_trials_finish(single, tmp_path):
    """The server draws the cards itself and redraws them when a generation's trials are told."""
    from optsearch.dashboard import DashboardServer

    url = f"sqlite:///{tmp_path / 'copy.db'}"
    optuna.copy_study(from_study_name="one", from_storage=URLS["one"], to_storage=url)
    single = optuna.load_study(study_name="one", storage=url)

    def cards() -> dict[str, str]:
        return get_plotly_graph_objects(single._storage.get_study_system_attrs(single._study_id))

    with DashboardServer("one", storage=url, port=0, refresh_s=0.3) as server:
        server.start()
        deadline = time.monotonic() + 60
        while server.refreshes < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server.refreshes == 1
        before = json.loads(cards()[GRAPH_PREFIX + "generations"])
        assert [d["x"][0] for d in before["data"] if d["type"] == "box"] == [0, 1, 2]
        # a new generation's trial is told: the next refresh adds its box
        t = single.trials[0]
        single.add_trial(optuna.trial.create_trial(
            params=t.params, distributions=t.distributions, values=t.values, user_attrs={**t.user_attrs, "generation": 3},
            system_attrs={"GeneticSampler:generation": 3, "GeneticSampler:member": 0,
                          "GeneticSampler:origin": "elite", "GeneticSampler:parents": [t.number]}))
        while server.refreshes < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server.refreshes == 2
    after = json.loads(cards()[GRAPH_PREFIX + "generations"])
    assert [d["x"][0] for d in after["data"] if d["type"] == "box"] == [0, 1, 2, 3]


def _bred_members(generations_: int, size: int = 3) -> list:
    """A synthetic search: each member a crossover of two members of the generation before, fitness rising."""
    from optsearch.analysis.evolution import Member

    members, rng = [], np.random.default_rng(0)
    for g in range(generations_):
        for i in range(size):
            number = g * size + i
            parents = [] if g == 0 else sorted(rng.choice(size, 2, replace=False) + (g - 1) * size)
            members.append(Member(number, g, i, "complete", float(g + rng.uniform()), (0.0,),
                                  "random" if g == 0 else "crossover", [int(p) for p in parents], Genome()))
    return members


def test_a_large_lineage_labels_only_its_main_line_of_fitter_parents():
    """375 labels at 7 pt overlapped into a smear (and were most of the lineage PNG's drawing time)."""
    from optsearch.analysis.evolution import main_line
    from optsearch.analysis.evolution_figures import LABELLED, lineage_png

    members = _bred_members(40)
    lin = lineage(members)
    assert len(lin.nodes) > LABELLED
    line = main_line(lin)
    by = {m.number: m for m in members}
    assert line[0] == lin.roots[0] and by[line[-1]].generation == 0 and len(line) == 40
    for child, parent in zip(line, line[1:]):  # each step goes to the child's fitter parent
        assert parent == max(by[child].parents, key=lambda n: by[n].fitness)
    labels = {t.get_text() for t in lineage_png(lin).axes[0].texts if t.get_text().startswith("#")}
    assert labels == {f"#{n}" for n in line}
    small = lineage(_bred_members(5))
    assert len({t.get_text() for t in lineage_png(small).axes[0].texts if t.get_text().startswith("#")}) == len(small.nodes)


def test_the_generations_png_labels_its_ticks_with_the_generation_numbers():
    """The box plot's own ticks labelled the boxes 0, 1, 2 … so thinned ticks of 50 generations read 0 … 24."""
    import io

    from optsearch.analysis.evolution_figures import generations_png

    fig = generations_png(generations(_bred_members(50)))
    fig.savefig(io.BytesIO(), format="png")
    bottom = fig.axes[-1]
    shown = [(t, lab.get_text()) for t, lab in zip(bottom.get_xticks(), bottom.get_xticklabels()) if lab.get_visible()]
    assert shown and all(float(text.replace("−", "-")) == t for t, text in shown)
    assert max(t for t, _ in shown) >= 40
