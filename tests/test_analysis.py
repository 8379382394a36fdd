"""The analysis against known ground truth: synthetic studies whose fitness is a known function of the genome.

Single-objective truth (``tests.synthetic.synthetic_fitness``): +0.05 without bias correction, a
+0.10 bump at lr_log10 = −2.5, +0.02 with an adam term, nothing from ε; high-lr unclipped genomes
diverge. Per-task truth: on mnist1d, disabling bias correction costs 0.03 (a trade-off with digits).
"""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from optuna_dashboard import get_note, save_note
from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

from optsearch.analysis.data import load_study_data
from optsearch.analysis.report import analyze_study, graph_id, replace_section, save_to_dashboard, write_outputs
from optsearch.analysis.result import analyze
from optsearch.cli import main
from optsearch.analysis.figures import pareto_mask
from optsearch.errors import StudyError
from optsearch.analysis.figures import importance_figure, principle_rows, principles_figure
from optsearch.analysis.importance import Importance, Surrogate
from optsearch.analysis.principles import Principle, bootstrap_diff, correct, holm
from optsearch.analysis.report import summary_text
from tests.synthetic import synthetic_study

PNG = b"\x89PNG\r\n\x1a\n"
CREATION_NOTE = "## Study config\n\npopulation 50 (written at creation; the analysis must keep it)"


def figures(study: optuna.Study) -> dict[str, str]:
    """The plotly figures saved in a study, read back as optuna-dashboard's server reads them."""
    return get_plotly_graph_objects(study._storage.get_study_system_attrs(study._study_id))


def principle(result_json: dict, kind: str, key: str, scope: str = "all") -> dict:
    (p,) = [p for p in result_json["principles"] if p["kind"] == kind and p["key"] == key and p["scope"] == scope]
    return p


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """A 300-trial aggregate-fitness study, analysed once with the library calls analyze_study makes."""
    root = tmp_path_factory.mktemp("single")
    url = f"sqlite:///{root / 'studies.db'}"
    study = synthetic_study("truth", url, n_trials=300, seed=0)
    save_note(study, CREATION_NOTE)
    result = analyze(load_study_data("truth", url))
    write_outputs(result, root / "report")
    save_to_dashboard(result)
    return {"url": url, "result": result, "out": root / "report",
            "json": json.loads((root / "report" / "principles.json").read_text(encoding="utf-8"))}


@pytest.fixture(scope="module")
def per_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("per_task")
    url = f"sqlite:///{root / 'studies.db'}"
    synthetic_study("tradeoff", url, n_trials=160, seed=1, per_task=True)
    return {"url": url, "root": root}


# ----------------------------------------------------------------------------- ground truth
def test_importance_ranks_lr_and_bias_correction_above_eps(single):
    imp = single["json"]["importance"]
    for method in (imp["ped_anova"], imp["surrogate"]["permutation_r2_drop"], imp["fanova"]["mean"]):
        assert method["lr_log10"] > method["eps_log10"]
        assert method["bias_correction"] > method["eps_log10"]
    ranking = sorted(imp["ped_anova"], key=lambda u: -imp["ped_anova"][u])
    assert ranking[0] == "lr_log10"
    # The surrogate says how far it can be believed; on this smooth truth it must be believable.
    assert imp["surrogate"]["cv_r2_mean"] > 0.6 and len(imp["surrogate"]["cv_r2"]) == 5
    assert len(imp["fanova"]["seeds"]) == 3 and all(v >= 0 for v in imp["fanova"]["std"].values())


def test_bias_correction_effect_recovered_with_ci_excluding_zero(single):
    p = principle(single["json"], "switch", "bias_correction")
    lo, hi = p["ci"]
    assert p["established"] and 0 < lo < p["effect"] < hi
    assert 0.035 < p["effect"] < 0.065  # truth: +0.05
    assert p["sentence"].startswith("Disabling bias correction: +0.0") and "95 % CI +" in p["sentence"]
    assert "not established" not in p["sentence"]
    # truth: +0.02. The regression that holds the other genes fixed finds it; the plain difference of
    # means is weaker evidence (its decision is left to the multiple-testing correction).
    adam = principle(single["json"], "primitive", "adam", "other genes held fixed")
    assert adam["established"] and adam["ci"][0] > 0 and adam["p_adjusted"] <= 0.05
    assert principle(single["json"], "primitive", "adam")["ci"][0] > 0


def test_eps_reported_as_not_established(single):
    eps = principle(single["json"], "continuous", "eps_log10", "held-out half")
    assert not eps["established"] and eps["ci"][0] < 0 < eps["ci"][1]
    assert eps["sentence"].endswith("— not established")
    lr = principle(single["json"], "continuous", "lr_log10", "held-out half")
    assert lr["established"] and lr["effect"] > 0.03
    lo, hi = lr["details"]["top_range"]
    assert lo < -2.5 < hi and hi - lo < 1.5  # the top 10 % sit around the bump at −2.5
    assert abs(lr["details"]["partial_dependence"]["argmax"] + 2.5) < 0.5


def test_diverged_trials_are_excluded_and_reported_separately(single):
    study = optuna.load_study(study_name="truth", storage=single["url"])
    diverged = [t for t in study.get_trials() if t.user_attrs.get("diverged")]
    assert diverged and all(t.state == TrialState.PRUNED for t in diverged)
    counts = single["json"]["counts"]
    assert counts["diverged"] == len(diverged)
    assert counts["complete"] == 300 - len(diverged)
    assert principle(single["json"], "switch", "bias_correction")["n"] == counts["complete"]
    # Divergence needs lr_log10 > −1 without clipping: clipping lowers the divergence rate.
    clip = principle(single["json"], "divergence", "clip")
    assert clip["n"] == 300 and clip["effect"] < 0


def test_report_json_and_figures_written(single):
    out = single["out"]
    report = (out / "report.md").read_text(encoding="utf-8")
    assert report.startswith("# Analysis of study `truth`")
    assert "**Disabling bias correction: +0.0" in report  # established principles are bold
    assert "eps_log10" in report and "not established" in report
    for name in ("importance", "history", "terms", "principles", "partial_dependence"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000
        assert f"({name}.png)" in report
    assert not (out / "pareto.png").exists()  # single objective: no Pareto front
    assert single["json"]["study"] == "truth" and single["json"]["objective"] == "fitness"


def test_report_draws_the_analysis_figures_in_a_forked_child_while_it_draws_the_search_ones(single, tmp_path,
                                                                                           monkeypatch):
    import os

    from optsearch.analysis import figures
    from optsearch.analysis.child import in_child

    import time

    drawn_by, meanwhile_ran = tmp_path / "pid", tmp_path / "meanwhile"
    real = figures.matplotlib_figures

    def spy(result):  # waits (up to 60 s) for `meanwhile`: it must run here while the child draws, not after
        deadline = time.monotonic() + 60
        while not meanwhile_ran.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        drawn_by.write_text(f"{os.getpid()} {meanwhile_ran.exists()}")
        return real(result)

    monkeypatch.setattr(figures, "matplotlib_figures", spy)
    paths = write_outputs(single["result"], tmp_path / "out", meanwhile=lambda: meanwhile_ran.write_text(str(os.getpid())))
    pid, waited = drawn_by.read_text().split()
    assert int(pid) != os.getpid()  # the child drew them ...
    assert waited == "True" and int(meanwhile_ran.read_text()) == os.getpid()  # ... while this process ran `meanwhile`
    assert {p.name for p in paths} >= {"importance.png", "history.png", "principles.png"}
    assert all(p.read_bytes()[:8] == PNG for p in paths if p.suffix == ".png")  # ... and they are there
    with pytest.raises(ZeroDivisionError):  # the child's errors come back
        in_child(lambda: 1 / 0)()


def test_analysis_runs_fanova_and_the_adjusted_effects_in_a_forked_child_with_the_same_numbers(single, tmp_path,
                                                                                                   monkeypatch):
    import os

    from optsearch.analysis import result as result_module

    data = single["result"].data
    ran_in = tmp_path / "pids"
    for name in ("fanova", "adjusted_principles"):
        def spy(*args, _real=getattr(result_module, name), _name=name, **kwargs):
            with ran_in.open("a") as f:
                f.write(f"{_name} {os.getpid()}\n")
            return _real(*args, **kwargs)
        monkeypatch.setattr(result_module, name, spy)
    parallel = analyze(data)
    pids = dict(line.split() for line in ran_in.read_text().splitlines())
    assert set(pids) == {"fanova", "adjusted_principles"} and int(pids["fanova"]) != os.getpid()  # in a child
    serial = analyze(data, in_parallel=False)  # everything here, in order: the same numbers
    dump = lambda r: json.dumps(r.to_dict(), sort_keys=True, default=str)  # noqa: E731 (NaN-safe equality)
    assert dump(parallel) == dump(serial) == dump(single["result"])
    assert parallel.importance.fanova and any(p.scope == "other genes held fixed" for p in parallel.principles)
    monkeypatch.setattr(result_module, "fanova", lambda view: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # the child's errors come back
        analyze(data)


def test_dashboard_note_and_figures_saved_and_replaced_on_rerun(single):
    study = optuna.load_study(study_name="truth", storage=single["url"])
    note = get_note(study)
    assert note.startswith(CREATION_NOTE)  # the creation note is kept
    assert "optsearch analysis — fitness" in note and "Disabling bias correction" in note
    ids = set(figures(study))
    expected = {graph_id("fitness", n) for n in ("importance", "history", "terms", "principles")}
    assert expected <= ids
    figure = json.loads(figures(study)[graph_id("fitness", "importance")])
    assert figure["data"][0]["type"] == "bar"

    save_to_dashboard(single["result"])  # a second analysis run
    study = optuna.load_study(study_name="truth", storage=single["url"])
    assert set(figures(study)) == ids
    again = get_note(study)
    assert again.count("optsearch analysis — fitness") == 1 and again.startswith(CREATION_NOTE)


def test_dashboard_server_serves_the_note_and_figures(single):
    """What the dashboard's page loads: its study API must carry the analysis note and figures."""
    import urllib.request

    from optsearch.dashboard import DashboardServer

    with DashboardServer("truth", storage=single["url"], port=0) as server:
        server.start()
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/api/studies/{server.study_id}", timeout=30) as r:
            detail = json.load(r)
    assert "Disabling bias correction: +0.0" in detail["note"]["body"]
    assert graph_id("fitness", "principles") in {g["id"] for g in detail["plotly_graph_objects"]}


# ----------------------------------------------------------------------------- per-task studies
def test_per_task_objective_and_pareto_front(per_task, capsys):
    out = per_task["root"] / "mnist1d"
    assert main(["analyze", "tradeoff", "--storage", per_task["url"], "--objective", "mnist1d", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "mnist1d fitness" in printed
    js = json.loads((out / "principles.json").read_text(encoding="utf-8"))
    assert js["objective"] == "mnist1d"
    bc = principle(js, "switch", "bias_correction")
    assert bc["established"] and bc["ci"][1] < 0  # truth on mnist1d: −0.03
    assert (out / "pareto.png").read_bytes()[:8] == PNG

    summary = analyze_study("tradeoff", storage=per_task["url"], out_dir=per_task["root"] / "mean")
    js = json.loads((per_task["root"] / "mean" / "principles.json").read_text(encoding="utf-8"))
    assert js["objective"] == "aggregate" and "mean task fitness" in summary
    # aggregate truth: (+0.05 − 0.03) / 2 = +0.01 — at least the point estimate's sign
    assert principle(js, "switch", "bias_correction")["effect"] > 0
    study = optuna.load_study(study_name="tradeoff", storage=per_task["url"])
    ids = set(figures(study))
    assert {graph_id("mnist1d", "history"), graph_id("aggregate", "history")} <= ids
    note = get_note(study)
    assert "— mnist1d fitness" in note and "— mean task fitness" in note  # one section per objective


def test_per_task_values_match_study(per_task):
    data = load_study_data("tradeoff", per_task["url"], "digits")
    assert data.values.shape == (len(data.y), 2)
    assert np.allclose(data.y, data.values[:, 0])
    agg = load_study_data("tradeoff", per_task["url"])
    assert np.allclose(agg.y, agg.values.mean(axis=1))


# ----------------------------------------------------------------------------- errors
def test_user_errors_are_one_line_study_errors(per_task, tmp_path, capsys):
    with pytest.raises(StudyError, match="no objective 'cifar10'.*aggregate, digits, mnist1d"):
        load_study_data("tradeoff", per_task["url"], "cifar10")
    with pytest.raises(StudyError, match="no study named 'nope'.*tradeoff"):
        load_study_data("nope", per_task["url"])
    missing = tmp_path / "absent" / "x.db"
    with pytest.raises(StudyError, match="no storage at"):
        load_study_data("tradeoff", f"sqlite:///{missing}")
    assert not missing.parent.exists()  # analysing must not create storages
    assert main(["analyze", "nope", "--storage", per_task["url"]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("optsearch: error: no study named 'nope'") and err.count("\n") == 1


def test_too_few_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    synthetic_study("tiny", url, n_trials=8, seed=0)
    with pytest.raises(StudyError, match="needs at least 10"):
        load_study_data("tiny", url)


# ----------------------------------------------------------------------------- helpers
def test_pareto_mask_maximizes():
    v = np.array([[1.0, 1.0], [2.0, 0.5], [0.5, 2.0], [0.9, 0.9], [2.0, 0.4]])
    assert pareto_mask(v).tolist() == [True, True, True, False, False]


def test_replace_section_keeps_other_text_and_is_idempotent():
    once = replace_section("config note", "fitness", "A")
    twice = replace_section(once, "fitness", "B")
    assert twice.startswith("config note") and "B" in twice and "\nA\n" not in twice
    both = replace_section(twice, "digits", "C")
    assert both.count("optsearch-analysis-fitness-begin") == 1 and "C" in both and "B" in both


def test_bootstrap_interval_covers_known_difference():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.3, 0.1, 400), rng.normal(0.2, 0.1, 400)
    d, lo, hi = bootstrap_diff(a, b, np.random.default_rng(1))
    assert lo < 0.1 < hi and hi - lo < 0.05
    assert bootstrap_diff(a, b, np.random.default_rng(1)) == (d, lo, hi)  # seeded: reproducible


def test_task_objective_of_a_single_objective_study_reads_its_user_attr(single):
    data = load_study_data("truth", single["url"], "digits")
    assert data.objective == "digits" and data.label == "digits fitness"
    study = optuna.load_study(study_name="truth", storage=single["url"])
    by_number = {t.number: t.user_attrs["digits_fitness"] for t in study.get_trials()}
    assert np.allclose(data.y, [by_number[n] for n in data.numbers])
    assert not np.allclose(data.y, load_study_data("truth", single["url"]).y)


# ----------------------------------------------------------------------------- multiple testing
def _principle(key: str, effect: float, ci: tuple[float, float], p: float) -> Principle:
    ok = ci[0] > 0 or ci[1] < 0
    return Principle("switch", key, "all", key, effect, ci, 100, 50, 50, ok, f"{key}: {effect:+.3f}", p=p)


def test_holm_adjusted_p_values():
    assert np.allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    assert np.allclose(holm([0.5]), [0.5]) and holm([]).size == 0


def test_correction_changes_a_borderline_decision():
    # Alone, p = 0.01 with an interval excluding zero is established ...
    alone = [_principle("warmup", 0.02, (0.005, 0.035), 0.01)]
    assert correct(alone) == 1 and alone[0].established
    # ... among 10 tests it is not (Holm: 0.01 × 10 > 0.05), and its sentence says why.
    family = [_principle("warmup", 0.02, (0.005, 0.035), 0.01)]
    family += [_principle(f"k{i}", 0.0, (-0.01, 0.01), 0.6) for i in range(8)]
    family.append(_principle("strong", 0.1, (0.08, 0.12), 1e-9))  # a strong effect survives
    correct(family)
    assert not family[0].established and family[0].p_adjusted == pytest.approx(0.09)  # second smallest: × 9
    assert "not established after Holm's correction for 10 tests" in family[0].sentence
    assert family[-1].established and not any(p.established for p in family[1:-1])


def test_report_counts_corrected_principles(single):
    js = single["json"]
    assert js["correction"]["method"] == "Holm" and js["correction"]["tests"] == sum(
        p["p"] is not None for p in js["principles"])
    for p in js["principles"]:
        if p["established"]:
            assert p["p_adjusted"] <= 0.05 and (p["ci"][0] > 0 or p["ci"][1] < 0)
    report = (single["out"] / "report.md").read_text(encoding="utf-8")
    assert f"Holm's step-down correction over all {js['correction']['tests']}" in report


def test_principles_figure_established_first_with_legend(single):
    ps = single["result"].principles
    fig = principles_figure(ps, "fitness", max_rows=12)
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    ticks = list(ax.get_yticks())
    top_down = [labels[ticks.index(y)] for y in sorted(ticks, reverse=True)]
    rows = principle_rows(ps, 12)
    assert len(top_down) == len(rows) == 12
    assert top_down == [f"{p.label} [{p.scope}]" for p in rows]
    n_est = sum(p.established for p in rows)
    assert n_est >= 2 and all(p.established for p in rows[:n_est]) and not any(p.established for p in rows[n_est:])
    (legend,) = fig.legends
    texts = " | ".join(t.get_text() for t in legend.get_texts())
    assert "established, raises fitness" in texts and "not after Holm" in texts and "not established" in texts
    assert "all trials" in texts and "other genes held fixed" in texts  # the markers are explained too
    assert "Holm-corrected" in ax.get_title()


# ----------------------------------------------------------------------------- agreement of the methods
def _importance(ped: dict, fa: dict, forest: dict) -> Importance:
    return Importance(ped, {u: (v, 0.0) for u, v in fa.items()},
                      Surrogate(None, [0.8], 0.8, {u: (v, 0.0) for u, v in forest.items()}), {})


def test_agreement_names_agreed_and_disputed_units():
    units = [f"u{i}" for i in range(8)]
    ped = {u: 8 - i for i, u in enumerate(units)}  # u0 first
    same = _importance(ped, ped, ped).agreement(k=3)
    assert same.agreed == ["u0", "u1", "u2"] and not same.disputed
    assert all(r == pytest.approx(1.0) for r in same.rho.values())
    fa = {**ped, "u2": -1.0, "u7": 100.0}  # fANOVA puts u7 first and u2 last
    ag = _importance(ped, fa, ped).agreement(k=3)
    assert ag.agreed == ["u0", "u1"] and set(ag.disputed) == {"u2", "u7"}
    assert ag.ranks["fANOVA"]["u7"] == 1 and ag.ranks["PED-ANOVA"]["u7"] == 8
    assert ag.rho["PED-ANOVA / forest"] == pytest.approx(1.0) and ag.rho["PED-ANOVA / fANOVA"] < 0.5
    assert "disagree on" in ag.text() and "u7 (#8 / #1 / #8)" in ag.text()


def test_terminal_summary_and_figure_show_all_three_methods_and_their_agreement(single):
    text = summary_text(single["result"])
    for method in ("PED-ANOVA:", "fANOVA:", "forest (CV R²"):
        assert method in text
    ag = single["result"].importance.agreement()
    assert "methods agree on" in text and "Spearman ρ" in text
    assert ("disagree on" in text) == bool(ag.disputed)
    assert "Holm-corrected over" in text
    fig = importance_figure(single["result"].importance, "importance")
    assert [a.get_title() for a in fig.axes][0] == "PED-ANOVA" and len(fig.axes) == 3
    footer = " ".join(fig._supxlabel.get_text().split())  # wrapped over lines
    assert "methods agree on" in footer and "top-5 overlap" in footer
    assert single["json"]["importance"]["agreement"]["agreed"] == ag.agreed


def test_views_and_fanova_match_optunas_evaluators_on_a_study():
    """The view skips the study's copies and fanova() Optuna's per-call search-space work; the numbers
    must stay those Optuna's evaluators give on a real study of the same trials."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import create_trial

    from optsearch.analysis.importance import FANOVA_DEPTH, FANOVA_TREES, fanova, ped_anova, view_study

    rng = np.random.default_rng(0)
    dists = {"lr": FloatDistribution(-5, -1), "wd": FloatDistribution(1e-6, 1e-1, log=True),
             "on": CategoricalDistribution((False, True)), "clip": CategoricalDistribution(("none", "value", "norm")),
             "fixed": CategoricalDistribution((True,))}
    params = [{"lr": rng.uniform(-5, -1), "wd": 10 ** rng.uniform(-6, -1), "on": bool(rng.integers(2)),
               "clip": ("none", "value", "norm")[rng.integers(3)], "fixed": True} for _ in range(120)]
    y = np.array([-(p["lr"] + 3) ** 2 + 0.3 * p["on"] + 0.1 * (p["clip"] == "norm") for p in params])
    y = y + rng.normal(0, 0.05, len(y))
    view = view_study(params, dists, y)
    study = optuna.create_study(direction="maximize")
    study.add_trials([create_trial(params=p, distributions=dists, value=float(v)) for p, v in zip(params, y)])
    assert ped_anova(view) == pytest.approx(optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()), abs=1e-12)
    ours = fanova(view, seeds=(0, 1))
    theirs = [optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(n_trees=FANOVA_TREES, max_depth=FANOVA_DEPTH, seed=s))
        for s in (0, 1)]
    assert set(ours) == set(dists)
    for k in dists:
        assert ours[k][0] == pytest.approx(np.mean([t[k] for t in theirs]), abs=1e-12)
        assert ours[k][1] == pytest.approx(np.std([t[k] for t in theirs]), abs=1e-12)
    assert max(ours, key=lambda k: ours[k][0]) == "lr"


def test_batched_bootstrap_fit_equals_one_weighted_fit_per_replicate():
    from optsearch.analysis.adjusted import fit

    rng = np.random.default_rng(0)
    X = np.c_[np.ones(200), rng.normal(size=(200, 6))]
    y = X @ rng.normal(size=7) + rng.normal(0, 0.1, 200)
    W = rng.integers(0, 3, (5, 200)).astype(float)
    batched = fit(X, y, W)
    for w, coef in zip(W, batched):
        rows = np.repeat(np.arange(200), w.astype(int))  # a replicate is the fit on the rows drawn
        assert np.allclose(coef, np.linalg.lstsq(X[rows], y[rows], rcond=None)[0], atol=1e-4)


def test_the_bootstrap_regression_gives_the_same_bits_whatever_blas_is_allowed():
    """OpenBLAS on two threads sums in another order than on one: the adjusted effects' fit pins it to one thread,
    so the printed analysis does not depend on how many threads BLAS would take."""
    from threadpoolctl import threadpool_limits

    from optsearch.analysis.adjusted import bootstrap_counts, fit

    rng = np.random.default_rng(0)
    n, d = 2000, 40
    X, y = np.c_[np.ones(n), rng.normal(size=(n, d - 1))], rng.normal(size=n)
    W = bootstrap_counts(rng.integers(0, n, (250, n)), n)
    fits = []
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="blas"):
            fits.append(fit(X, y, W))
    assert np.array_equal(fits[0], fits[1])


def test_scikit_learn_is_imported_before_the_forest_thread_starts():
    """A first import of scikit-learn in two threads at once can fail (partly initialised module): the forest's
    thread must find it imported. In a fresh process, so no earlier test has imported it already."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import numpy as np\n"
        "from optsearch.analysis import importance\n"
        "from optsearch.genome import Genome\n"
        "seen = []\n"
        "def fake(*a, **k):\n"
        "    seen.append(all(m in sys.modules for m in ('sklearn.ensemble', 'sklearn.metrics', 'sklearn.model_selection')))\n"
        "    return importance.Surrogate(model=None, cv_r2=[], oob_r2=float('nan'))\n"
        "importance.surrogate = fake\n"
        "gs = [Genome(lr_log10=-3.0 + i / 10) for i in range(12)]\n"
        "importance.compute_importance(gs, np.linspace(0, 1, 12), with_fanova=False)\n"
        "assert seen == [True], seen\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


def test_the_forest_on_every_core_gives_the_numbers_of_one_core(monkeypatch):
    """The surrogate's forest fits and predicts on threads; its CV scores and importances must not depend on how many."""
    import sklearn.ensemble

    used = []
    fit = sklearn.ensemble.RandomForestRegressor.fit
    monkeypatch.setattr(sklearn.ensemble.RandomForestRegressor, "fit",
                        lambda self, X, y: (used.append(self.n_jobs), fit(self, X, y))[1])
    from optsearch.analysis import importance
    from optsearch.genome import Genome

    rng = np.random.default_rng(0)
    gs = [Genome(lr_log10=float(rng.uniform(-4, -1)), bias_correction=bool(rng.integers(2))) for _ in range(60)]
    y = np.array([-(g.lr_log10 + 2.5) ** 2 + 0.3 * g.bias_correction for g in gs]) + rng.normal(0, 0.05, 60)
    features = importance.genome_features(gs)
    runs = []
    for cores in (1, 4):
        monkeypatch.setattr("os.cpu_count", lambda: cores)
        s = importance.surrogate(features, y)
        assert s.model.get_params()["n_jobs"] == 1  # fitted on `cores` threads, predicts on one
        runs.append((s.cv_r2, s.oob_r2, s.importance, s.model.predict(features.X).tolist()))
        # its trees predict on `cores` threads, added in the trees' order: scikit-learn's one-thread numbers
        X = rng.normal(size=(5000, features.X.shape[1])) + features.X.mean(axis=0)
        assert importance.predict(s.model, X).tolist() == s.model.predict(X).tolist()
    assert runs[0] == runs[1] and set(used) == {1, 4}
