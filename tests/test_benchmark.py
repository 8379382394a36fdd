"""The benchmark: equal tuning budgets, paired seeds, correct intervals, reports, reuse of tuning studies.

One small end-to-end benchmark (digits searched, mnist1d held out; 20 steps, 2 tuning trials, 5 seeds)
runs through the real entry point ``run_cli`` and is shared by the tests that read its outputs.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from optsearch import stats
from optsearch.benchmark.config import BenchmarkConfig, FINAL_SEED_BASE
from optsearch.benchmark.contenders import (BASELINE_NAMES, LR_WINDOW, MUON, PAPER, default_contenders,
                                            genome_contender)
from optsearch.benchmark.report import markdown
from optsearch.benchmark.results import BenchmarkResult, HELD_OUT, SEARCHED, TaskResult
from optsearch.benchmark import runner
from optsearch.benchmark.runner import run_cli, write_outputs
from optsearch.benchmark.runs import UnitScore, evaluate_genomes, muon_factory, train_single
from optsearch.benchmark.tuning import Tuned, rounds, tune
from optsearch.search import study as studies
from optsearch.cli import main
from optsearch.errors import ConfigError
from optsearch.genome import Genome, search_space

STEPS, TRIALS, SEEDS, BATCH = 20, 2, 5, 32
TASKS = "digits,mnist1d"
# An "evolved" genome: smooth (Adam + Nesterov terms), with a schedule of its own and no weight decay.
EVOLVED = replace(Genome.named("adam"), terms=("adam", "nesterov", "none", "none"), alphas=(1.0, 0.5, 0.0, 0.0),
                  lr_log10=-2.5, cosine_decay=True)


def _trial_counts(url: str) -> dict[str, dict[str, int]]:
    """Per tuning study: its trial states (COMPLETE, FAIL, …) counted, and its lr-window extension trials."""
    from optsearch.benchmark.tuning import EXTENSION_ATTR

    out = {}
    for s in optuna.get_all_study_summaries(url, include_best_trial=False):
        if s.study_name.startswith("bench:"):
            trials = optuna.load_study(study_name=s.study_name, storage=url).get_trials(deepcopy=False)
            out[s.study_name] = {st.name: sum(t.state == st for t in trials) for st in TrialState}
            out[s.study_name]["EXTENSION"] = sum(EXTENSION_ATTR in t.user_attrs for t in trials)
    return out


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A study searched on digits whose best genome is EVOLVED, plus the same genome as a file (a twin)."""
    root = tmp_path_factory.mktemp("bench")
    url = f"sqlite:///{root / 'db.sqlite'}"
    cfg = root / "study.toml"
    cfg.write_text('[search]\ntasks = ["digits"]\npopulation = 3\ngenerations = 1\n', encoding="utf-8")
    studies.create("demo", config_path=str(cfg), storage=url)
    st, _ = studies.open_study("demo", url)
    st.add_trial(optuna.trial.create_trial(params=EVOLVED.to_params(), distributions=search_space(), value=0.9))
    twin = root / "twin.json"
    EVOLVED.save(twin)
    kw = dict(study_name="demo", genome_files=[str(twin)], tasks=TASKS, seeds=SEEDS, steps=STEPS, trials=TRIALS,
              batch_size=BATCH, storage=url, device="cpu")
    text = run_cli(**kw, out_dir=str(root / "out"))
    return {"root": root, "url": url, "kw": kw, "text": text, "out": root / "out",
            "json": json.loads((root / "out" / "results.json").read_text(encoding="utf-8"))}


CONTENDERS = {"demo#0", "twin", "sgd_momentum", "adam", "adamw", "rmsprop", "lion", "paper_evolved", "muon"}


def test_every_contender_gets_the_same_tuning_budget_in_stored_studies(bench):
    counts = _trial_counts(bench["url"])
    for task in TASKS.split(","):
        per_contender = {name.split(":")[1]: c for name, c in counts.items() if name.split(":")[2] == task}
        assert set(per_contender) == CONTENDERS
        assert {c["COMPLETE"] - c["EXTENSION"] for c in per_contender.values()} == {TRIALS}
        tuned = bench["json"]["tasks"][task]["contenders"]
        for name, c in per_contender.items():  # extension trials only where the report lists an extension
            assert c["EXTENSION"] == 2 * len(tuned[name]["tuned"]["extensions"]), name
        assert all(c["RUNNING"] == 0 and c["WAITING"] == 0 for c in per_contender.values())
    # The same start for everyone: the default, then a log grid across the window (then TPE).
    for name in counts:
        contender = next(c for c in default_contenders([("demo#0", EVOLVED), ("twin", EVOLVED)])
                         if c.name == name.split(":")[1])
        first = optuna.load_study(study_name=name, storage=bench["url"]).trials[: rounds(TRIALS)[0]]
        expected = contender.startup_params(len(first))
        assert [sorted(t.params) for t in first] == [sorted(p) for p in expected], name
        for t, p in zip(first, expected):
            assert [t.params[k] for k in sorted(p)] == pytest.approx([p[k] for k in sorted(p)]), name
    # Weight decay is tuned exactly for the contenders that have it; lr for everyone.
    for name in counts:
        contender = name.split(":")[1]
        trial = optuna.load_study(study_name=name, storage=bench["url"]).trials[0]
        expected = {"lr_log10", "wd_log10"} if contender in {"adamw", "lion", "muon", "paper_evolved"} else {"lr_log10"}
        assert set(trial.params) == expected, name
    # The result names the study each tuned setting came from, and that setting is its best trial.
    adam = bench["json"]["tasks"]["digits"]["contenders"]["adam"]["tuned"]
    st = optuna.load_study(study_name=adam["study"], storage=bench["url"])
    assert adam["params"] == st.best_trial.params and adam["trials"] == TRIALS  # 2 trials: too few to extend
    assert adam["extensions"] == [] and adam["at_edge"] in ("top", "bottom")  # so the edge is only reported


def test_seeds_are_paired_and_identical_genomes_differ_by_exactly_zero(bench):
    res = bench["json"]
    assert res["reference"] == "demo#0"
    for task, r in res["tasks"].items():
        assert r["seeds"] == list(range(FINAL_SEED_BASE, FINAL_SEED_BASE + SEEDS))
        assert not set(r["seeds"]) & set(res["config"]["tune_seeds"])
        for name, c in r["contenders"].items():
            assert len(c["test_accuracy"]) == len(c["train_loss"]) == len(c["diverged"]) == SEEDS, (task, name)
        ref, twin = r["contenders"]["demo#0"], r["contenders"]["twin"]
        assert ref["tuned"]["params"] == twin["tuned"]["params"]
        assert twin["test_accuracy"] == ref["test_accuracy"]
        d = twin["diff_vs_reference"]
        assert d["mean"] == 0.0 and d["lo"] == 0.0 and d["hi"] == 0.0 and not d["excludes_zero"]
        # Seeds differ from one another (the pairing is not trivially constant)...
        assert len(set(r["contenders"]["adam"]["test_accuracy"])) > 1
    # ...and entry k is seed k: a lone rerun of tuned Adam on the 4th seed at --batch-size reproduces
    # entry 3, and the task's default batch size does not (the flag reached the training).
    r = res["tasks"]["digits"]
    assert res["config"]["batch_size"] == BATCH
    tuned = Genome.named("adam")
    tuned = replace(tuned, cosine_decay=True, lr_log10=r["contenders"]["adam"]["tuned"]["params"]["lr_log10"])
    runs = {}
    for bs in (BATCH, None):
        cfg = BenchmarkConfig(tasks=("digits",), steps=STEPS, batch_size=bs, device="cpu")
        runs[bs] = evaluate_genomes([tuned], "digits", [r["seeds"][3]], cfg, split="test")[0][0]
    assert runs[BATCH].accuracy == r["contenders"]["adam"]["test_accuracy"][3]
    assert runs[None].loss != runs[BATCH].loss


def test_outputs_are_written_and_mark_searched_and_held_out(bench):
    out = bench["out"]
    for f in ("report.md", "results.json", "bars.png", "curves.png"):
        assert (out / f).stat().st_size > 0, f
    for f in ("bars.png", "curves.png"):
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md == bench["text"].split("\nwrote ")[0]
    assert "### digits (searched)" in md and "### mnist1d (held-out)" in md
    assert md.index("## Held-out tasks") < md.index("## Searched tasks")
    assert "### Aggregate over held-out tasks (mnist1d)" in md
    assert md.count("| muon |") == 4  # two task tables and two aggregate tables
    res = bench["json"]
    assert res["config"]["searched"] == ["digits"]
    assert res["tasks"]["digits"]["group"] == "searched" and res["tasks"]["mnist1d"]["group"] == "held-out"
    assert set(res["aggregate"]) == {"searched", "held-out"}
    # The table's numbers are the JSON's: adam's row on mnist1d, mean ± t half-width of its raw seeds.
    acc = res["tasks"]["mnist1d"]["contenders"]["adam"]["test_accuracy"]
    iv = stats.t_interval(acc)
    assert f"| {100 * iv.mean:.2f} ± {100 * iv.half_width:.2f} |" in md.split("### mnist1d")[1].split("| adam |")[1]
    curve = res["tasks"]["digits"]["contenders"]["adam"]["curves"][0]
    assert curve[-1][0] == STEPS and len(curve) > 5


def test_rerun_reuses_tuning_studies(bench, tmp_path):
    before = _trial_counts(bench["url"])
    # One task and two seeds keep the rerun short; neither is part of a tuning study's key.
    run_cli(**{**bench["kw"], "tasks": "digits", "seeds": 2}, out_dir=str(tmp_path))
    assert _trial_counts(bench["url"]) == before
    again = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))["tasks"]["digits"]["contenders"]
    for name, c in bench["json"]["tasks"]["digits"]["contenders"].items():
        assert again[name]["tuned"] == c["tuned"]
        assert again[name]["test_accuracy"] == c["test_accuracy"][:2]  # seed k is the same run in both


def test_only_the_first_trials_of_a_bigger_tuning_study_count(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    adam = [genome_contender("adam", Genome.named("adam"), "baseline")]
    cfg = BenchmarkConfig(tasks=("digits",), steps=20, trials=3, device="cpu")
    storage = optuna.storages.RDBStorage(url)
    big = tune(adam, "digits", cfg, storage)["adam"]
    assert big.complete_trials == 3 + 2 * len(big.extensions) and big.new_trials == big.complete_trials
    small = tune(adam, "digits", replace(cfg, trials=2), storage)["adam"]
    assert small.complete_trials - 2 * len(small.extensions) == 2
    first_two = optuna.load_study(study_name=small.study_name, storage=url).trials[:2]
    if not small.extensions:
        assert small.new_trials == 0 and small.value == max(t.value for t in first_two)
    # The contender's own default is always one of its trials (the first).
    assert first_two[0].params == {"lr_log10": Genome.named("adam").lr_log10}


def test_single_model_trainer_matches_the_batched_evaluator_for_adam():
    """The Muon path (one model, any torch optimizer) uses the evaluator's data, init and batch order."""
    cfg = BenchmarkConfig(tasks=("digits",), steps=60, device="cpu")
    seeds = [1000, 1001]
    batched = evaluate_genomes([Genome.named("adam")], "digits", seeds, cfg, split="test")[0]
    for s, b in zip(seeds, batched):
        one = train_single("digits", lambda m, _: torch.optim.Adam(m.parameters(), lr=1e-3), seed=s,
                           spec=cfg.run_spec("digits", split="test"))
        assert one.accuracy == b.accuracy  # same test accuracy, example for example
        assert one.loss == pytest.approx(b.loss, abs=1e-4)
        assert not one.diverged
    assert batched[0].accuracy != batched[1].accuracy or batched[0].loss != batched[1].loss


def test_muon_puts_2d_weights_on_muon_and_the_rest_on_adamw():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    opt = muon_factory({"lr_log10": -3.0, "wd_log10": -2.0})(model, 10)
    muon, adamw = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert [p.shape for p in muon.param_groups[0]["params"]] == [torch.Size([3, 8])]
    assert len(adamw.param_groups[0]["params"]) == 3  # conv weight (4-D), conv bias, linear bias
    assert muon.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"
    assert muon.param_groups[0]["weight_decay"] == pytest.approx(0.01)


# ----------------------------------------------------------------------------- statistics
def test_t_interval_matches_scipy_and_the_textbook():
    from scipy import stats as sps

    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    iv = stats.t_interval(x)
    # Textbook: mean 3, s = √2.5, t(0.975, 4) = 2.776 → 3 ± 2.776·√2.5/√5 = 3 ± 1.963.
    assert iv.mean == 3.0 and iv.n == 5
    assert iv.lo == pytest.approx(1.037, abs=1e-3) and iv.hi == pytest.approx(4.963, abs=1e-3)
    assert stats.t_quantile(0.95, 4) == pytest.approx(2.776, abs=1e-3)
    rng = np.random.default_rng(0)
    for n in (2, 5, 12):
        for level in (0.9, 0.95, 0.99):
            y = rng.normal(0.7, 0.05, n)
            lo, hi = sps.t.interval(level, n - 1, loc=y.mean(), scale=sps.sem(y))
            got = stats.t_interval(y, level)
            assert (got.lo, got.hi) == pytest.approx((lo, hi), rel=1e-12)


def test_paired_difference_matches_scipy_ttest_rel():
    from scipy import stats as sps

    a = [0.91, 0.93, 0.90, 0.94, 0.92]
    b = [0.90, 0.915, 0.885, 0.935, 0.90]
    d = stats.paired_difference(a, b)
    ci = sps.ttest_rel(a, b).confidence_interval(0.95)
    assert d.mean == pytest.approx(np.mean(np.subtract(a, b)))
    assert (d.lo, d.hi) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert d.excludes_zero and d.sign == 1
    # The unpaired intervals overlap: pairing is what makes the difference visible.
    ia, ib = stats.t_interval(a), stats.t_interval(b)
    assert ia.lo < ib.hi
    assert stats.paired_difference(b, a).sign == -1
    same = stats.paired_difference(a, a)
    assert (same.mean, same.lo, same.hi, same.sign) == (0.0, 0.0, 0.0, 0)
    with pytest.raises(ValueError):
        stats.paired_difference([1.0, 2.0], [1.0])


def test_interval_of_one_value_is_undefined_not_zero_width():
    iv = stats.t_interval([0.5])
    assert iv.mean == 0.5 and math.isnan(iv.lo) and math.isnan(iv.hi) and not iv.excludes_zero
    assert iv.fmt(100) == "50.00"
    assert iv.to_dict()["lo"] is None


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "argv, message",
    [
        (["benchmark"], "give a study NAME or at least one --genome"),
        (["benchmark", "--genome", "adam", "--seeds", "1", "--tasks", "digits"], "--seeds must be ≥ 2"),
        (["benchmark", "--genome", "adam", "--trials", "0", "--tasks", "digits"], "--trials must be ≥ 1"),
        (["benchmark", "--genome", "adam", "--batch-size", "0", "--tasks", "digits"], "--batch-size must be ≥ 1"),
        (["benchmark", "--genome", "adam", "--tasks", "digits,nope"], "unknown task 'nope'"),
        (["benchmark", "--genome", "no_such_genome", "--tasks", "digits"], "unknown genome 'no_such_genome'"),
        (["benchmark", "--genome", "adam", "--tasks", "digits", "--contenders", "adam,adamx"], "unknown contender(s) adamx"),
        (["benchmark", "--genome", "adam", "--tasks", "digits", "--contenders", ","], "unknown contender(s)"),
        (["benchmark", "--genome", "adam", "--tasks", "digits", "--tune-seeds", "1"], "--tune-seeds must be ≥ 2"),
    ],
)
def test_bad_benchmark_input_exits_2_with_one_line(argv, message, capsys, tmp_path):
    assert main([*argv, "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err
    assert not (tmp_path / "out").exists()


def test_contenders_flag_keeps_the_evolved_genome_and_only_the_named_baselines(monkeypatch, tmp_path):
    seen = {}

    def fake_run(name, evolved, cfg, **kw):
        seen["names"] = [c.name for c in default_contenders(evolved, only=kw["only"])]
        seen["tune_seeds"] = cfg.tune_seeds
        raise SystemExit(0)

    monkeypatch.setattr(runner, "run_benchmark", fake_run)
    with pytest.raises(SystemExit):
        main(["benchmark", "--genome", "adam", "--tasks", "digits", "--contenders", "lion, muon,lion",
              "--tune-seeds", "3", "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}"])
    assert seen == {"names": ["adam", "lion", "muon"], "tune_seeds": (0, 1, 2)}


def test_tuning_scores_the_mean_over_the_tuning_seeds(monkeypatch, tmp_path):
    """A trial's value is the mean over the tuning seeds: one lucky seed cannot pick an lr alone."""
    from optsearch.benchmark import tuning

    calls = []

    def fake(task, settings, seeds, cfg, *, split):
        calls.append((tuple(seeds), split))
        return [[UnitScore(accuracy=0.5, loss=1.0, fitness=0.9 if s == 0 else 0.1, diverged=False, curve=[])
                 for s in seeds] for _ in settings]

    monkeypatch.setattr(tuning, "evaluate_settings", fake)
    cfg = BenchmarkConfig(tasks=("digits",), trials=2, steps=5)
    assert cfg.tune_seeds == (0, 1)
    out = tune([genome_contender("adam", Genome.named("adam"), "baseline")], "digits", cfg,
               f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert calls and all(c == ((0, 1), "val") for c in calls)
    assert out["adam"].value == pytest.approx(0.5)


def test_contender_windows_have_equal_width_and_names_are_unique():
    cs = default_contenders([("evo", EVOLVED)])
    assert [c.name for c in cs] == ["evo", "sgd_momentum", "adam", "adamw", "rmsprop", "lion", "paper_evolved", "muon"]
    assert {round(c.lr_range[1] - c.lr_range[0], 9) for c in cs} == {LR_WINDOW}
    assert all(c.lr_range[0] <= c.lr_log10 <= c.lr_range[1] for c in cs)
    # the window reaches 2.5 decades below the default (an MLP-tuned default can be far too high on a CNN)
    evo, adam = cs[0], next(c for c in cs if c.name == "adam")
    assert evo.lr_range == pytest.approx((evo.lr_log10 - 2.5, evo.lr_log10 + 1.5))
    assert adam.lr_range == pytest.approx((-5.0, -1.0))  # 1e-3 − 2.5 decades is below the genome's floor: shifted up
    assert all(c.genome.cosine_decay for c in cs if c.role == "baseline" and c.genome is not None)
    constant = default_contenders([("evo", EVOLVED)], baseline_recipe="constant")
    assert next(c for c in constant if c.name == "adam").genome == Genome.named("adam")
    with pytest.raises(ConfigError):
        default_contenders([("x", EVOLVED), ("x", EVOLVED)])


# ----------------------------------------------------------------------------- baseline recipe
class _Stop(Exception):
    """Raised by a stand-in for tune(): the contenders are what the test needs, not a training run."""


# An evolved genome with a whole recipe: warmup, cosine decay, global-norm clipping.
RECIPED = replace(EVOLVED, warmup=True, warmup_frac=0.22, clip="norm", clip_threshold=0.262)


@pytest.mark.parametrize("flag", [[], ["--baseline-recipe", "evolved"], ["--baseline-recipe", "named"],
                                  ["--baseline-recipe", "constant"]])
def test_baselines_get_the_evolved_genomes_recipe_by_default(flag, monkeypatch, tmp_path):
    """By default a baseline differs from the evolved genome in its update rule only: the same warmup, schedule
    and clipping (Muon too); ``named`` is the old protocol (cosine decay only), ``constant`` the named optimizers."""
    seen = []

    def fake_tune(contenders, *a, **k):
        seen.append(list(contenders))
        raise _Stop

    monkeypatch.setattr(runner, "tune", fake_tune)
    evo = tmp_path / "evo.json"
    RECIPED.save(evo)
    with pytest.raises(_Stop):
        main(["benchmark", "--genome", str(evo), "--tasks", "digits", *flag,
              "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}", "-o", str(tmp_path / "out")])
    cs = {c.name: c for c in seen[0]}
    baselines = [c for c in seen[0] if c.role == "baseline"]
    assert {c.name for c in baselines} == {*BASELINE_NAMES, MUON}
    kind = flag[1] if flag else "evolved"
    want = {"evolved": RECIPED.recipe(), "named": {**Genome().recipe(), "cosine_decay": True},
            "constant": Genome().recipe()}[kind]
    for c in baselines:
        assert c.recipe == want, c.name
        if c.genome is not None:  # the recipe is the only change to the named genome
            assert c.genome == Genome.named(c.name).with_recipe(replace(Genome(), **want)), c.name
    # The evolved and the paper's genomes keep their own recipes either way.
    assert cs["evo"].genome == RECIPED and cs[PAPER].genome == Genome.named(PAPER)


def test_baseline_recipe_flag_rejects_other_recipes(capsys):
    with pytest.raises(SystemExit) as e:
        main(["benchmark", "--genome", "adam", "--baseline-recipe", "linear"])
    assert e.value.code == 2 and "invalid choice: 'linear'" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        default_contenders([("evo", EVOLVED)], baseline_recipe="cosine")


def test_muon_trains_with_the_recipes_warmup_and_clipping():
    """Muon has no genome: its warmup, decay and clipping come from the recipe through its scheduler and clip."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    opt = muon_factory({"lr_log10": -2.0, "wd_log10": -4.0}, recipe=RECIPED.recipe())(model, 100)
    w = max(1, round(0.22 * 100))
    for o in opt.optimizers:  # step 1 of a 22-step warmup
        assert o.param_groups[0]["lr"] == pytest.approx(1e-2 / w)
    for p in model.parameters():
        p.grad = torch.full_like(p, 5.0)
    opt.step()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert float(norm) == pytest.approx(0.262, rel=1e-4)  # clipped to the recipe's global norm
    assert opt.optimizers[0].param_groups[0]["lr"] == pytest.approx(2e-2 / w)
    plain = muon_factory({"lr_log10": -2.0, "wd_log10": -4.0})(model, 100)  # named recipe: cosine, no clip
    assert plain.clip == "none" and plain.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-2, rel=1e-3)


def test_a_best_lr_at_the_top_edge_extends_the_window_and_the_report_says_so(monkeypatch, tmp_path):
    """Fitness rising with lr: the best of the start grid is the top one, so the window grows half a decade (two
    trials) up to the genome's lr range; falling with lr, it grows downwards; an interior optimum is not extended."""
    from optsearch.benchmark import tuning
    from optsearch.genome import FLOAT_RANGES

    def fake(task, settings, seeds, cfg, *, split):
        out = []
        for c, p in settings:
            x = p["lr_log10"]
            f = {"rising": x, "falling": -x}.get(c.name, -abs(x - c.lr_log10))
            out.append([UnitScore(0.5, 1.0, f, False) for _ in seeds])
        return out

    monkeypatch.setattr(tuning, "evaluate_settings", fake)
    rising = genome_contender("rising", replace(Genome.named("adam"), lr_log10=-3.5), "baseline")
    peaked = genome_contender("peaked", replace(Genome.named("adam"), lr_log10=-3.0), "baseline")
    falling = genome_contender("falling", replace(Genome.named("adam"), lr_log10=-1.0), "baseline")
    cfg = BenchmarkConfig(tasks=("digits",), trials=4, steps=5)
    url = optuna.storages.InMemoryStorage()  # no training here: spare the SQLite round trips
    out = tune([rising, peaked, falling], "digits", cfg, url)
    lo_all, top, _ = FLOAT_RANGES["lr_log10"]
    r = out["rising"]
    assert rising.lr_range[1] == top - 0.5 and r.window == (rising.lr_range[0], top) and r.extensions == ("top",)
    assert r.params["lr_log10"] == pytest.approx(top) and r.edge == "top"  # the range ended: still at the edge
    assert out["falling"].window == (lo_all, falling.lr_range[1]) and out["falling"].extensions == ("bottom",)
    assert r.complete_trials == 4 + 2 * len(r.extensions)
    assert out["peaked"].extensions == () and out["peaked"].window == peaked.lr_range
    again = tune([rising, peaked, falling], "digits", cfg, url)  # a rerun replays the stored extensions, runs nothing
    assert again["rising"].new_trials == 0 and again["rising"].params == r.params
    result = _fake_result([rising, peaked])
    result.tasks["digits"].tuned.update(out)
    md = markdown(result)
    assert "Tuning windows extended" in md and "rising on digits (top" in md and "still at its top edge" in md
    assert result.to_json()["tasks"]["digits"]["contenders"]["rising"]["tuned"]["extensions"] == list(r.extensions)


def test_report_and_json_state_every_contenders_recipe_and_the_recipe_matched_headline():
    result = _fake_result(default_contenders([("evo", RECIPED)]))
    md, js = markdown(result), result.to_json()
    assert "- adam: warmup 22 %, cosine decay, clip ‖g‖ ≤ 0.262 (from evolved evo)" in md
    assert f"- {PAPER}: warmup 20 %, cosine decay, no clipping" in md
    muon = next(c for c in js["contenders"] if c["name"] == MUON)
    assert muon["recipe"] == RECIPED.recipe() and muon["formula"].endswith("clip ‖g‖ ≤ 0.262")
    assert js["config"]["recipe_matched_baselines"] == [*BASELINE_NAMES, MUON]
    # the baselines' accuracies rise with their index: the best recipe-matched one is the last, muon
    assert "**Headline:** evo − the best recipe-matched baseline (muon)" in md
    named = _fake_result(default_contenders([("evo", RECIPED)], baseline_recipe="named"))
    assert "no baseline ran with evo's recipe" in markdown(named)
    assert named.to_json()["config"]["baseline_recipe"] == "cosine decay, no clipping"


def test_split_val_scores_the_final_runs_on_validation_and_seed_base_moves_them(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(runner, "tune", lambda cs, task, cfg, st, log: {
        c.name: Tuned(params=c.default_params(), value=0.5, study_name="s", complete_trials=1, new_trials=0) for c in cs})

    def fake(task, settings, seeds, cfg, split):
        calls.append((tuple(seeds), split))
        return [[UnitScore(0.9 + 0.01 * i, 0.1, 0.9, False) for _ in seeds] for i in range(len(settings))]

    monkeypatch.setattr(runner, "evaluate_settings", fake)
    text = run_cli(genome_files=["adam"], tasks="digits", seeds=3, split="val", seed_base=5000, contenders="adamw",
                   storage=f"sqlite:///{tmp_path}/b.db", out_dir=str(tmp_path / "out"))
    assert calls == [((5000, 5001, 5002), "val")]
    assert "scored on the **val** split (validation: test split unread)" in text and "validation acc %" in text
    js = json.loads((tmp_path / "out" / "results.json").read_text())
    assert js["config"]["split"] == "val" and js["config"]["seeds"] == [5000, 5001, 5002]
    with pytest.raises(ConfigError, match="--split"):
        BenchmarkConfig(tasks=("digits",), split="train").validate()
    with pytest.raises(ConfigError, match="final seeds must differ"):
        BenchmarkConfig(tasks=("digits",), seed_base=0).validate()


def _fake_result(contenders, diverged=(), searched=frozenset(), collapsed=()):
    """A finished benchmark without training: two seeds per contender on digits; the contenders named in
    ``diverged`` diverged in every tuning trial and every seed (scored at chance, as run_benchmark does);
    those in ``collapsed`` did not diverge but ended at chance on their first seed."""
    tuned = {c.name: Tuned(params=c.default_params(), value=-1.0 if c.name in diverged else 0.5,
                                     study_name="s", complete_trials=1, new_trials=0) for c in contenders}
    curve = [[10, 2.0], [20, 1.0]]
    scores = {c.name: [UnitScore(0.1, math.nan, -1.0, True) if c.name in diverged else
                       UnitScore(0.11 if c.name in collapsed and k == 0 else 0.9 + 0.01 * i + 0.001 * k,
                                           0.1, 0.9, False, curve) for k in range(2)]
              for i, c in enumerate(contenders)}
    cfg = BenchmarkConfig(tasks=("digits",), searched=frozenset(searched), seeds=2)
    task = TaskResult(task="digits", group=SEARCHED if cfg.searched_through("digits") else HELD_OUT,
                                seeds=cfg.final_seeds, tuned=tuned, scores=scores)
    return BenchmarkResult(name="x", config=cfg, contenders=list(contenders), tasks={"digits": task})


# ----------------------------------------------------------------------------- what the report shows
def test_report_names_every_searched_task_even_when_only_held_out_ones_are_benchmarked():
    md = markdown(_fake_result(default_contenders([("evo", EVOLVED)]),
                                         searched={"mnist1d", "cifar10"}))
    assert "evo was searched on: cifar10, mnist1d. Here, searched tasks: none; held-out tasks: digits." in md
    md = markdown(_fake_result(default_contenders([("evo", EVOLVED)]), searched={"digits"}))
    assert "Here, searched tasks: digits; held-out tasks: none." in md and "### digits (searched)" in md


def test_a_task_whose_training_data_the_search_saw_is_not_held_out(tmp_path, monkeypatch):
    """cifar10_small trains on CIFAR-10's images, digits_cnn on the digits: after a search on them, cifar10 and
    digits are searched tasks (a different model, the same data), mnist stays held-out — in the runner's
    groups, the aggregates and the report."""
    cfg = BenchmarkConfig(tasks=("cifar10", "digits", "mnist"), searched=frozenset({"cifar10_small", "digits_cnn"}),
                          seeds=2)
    assert [cfg.searched_through(t) for t in cfg.tasks] == ["cifar10_small", "digits_cnn", None]
    assert BenchmarkConfig(tasks=("digits",), searched=frozenset({"digits"})).searched_through("digits") == "digits"
    cs = default_contenders([("evo", EVOLVED)])[:2]
    monkeypatch.setattr(runner, "tune", lambda cs, task, cfg, st, log: {
        c.name: Tuned(params=c.default_params(), value=0.5, study_name="s", complete_trials=1, new_trials=0) for c in cs})
    monkeypatch.setattr(runner, "evaluate_settings", lambda task, settings, seeds, cfg, split: [
        [UnitScore(0.9 + 0.01 * i + 0.001 * k, 0.1, 0.9, False) for k in range(len(seeds))] for i in range(len(settings))])
    result = runner.run_benchmark("x", [("evo", EVOLVED)], cfg, storage=f"sqlite:///{tmp_path}/b.db", contenders=cs)
    assert {t: r.group for t, r in result.tasks.items()} == {"cifar10": SEARCHED, "digits": SEARCHED, "mnist": HELD_OUT}
    assert result.groups() == {HELD_OUT: ["mnist"], SEARCHED: ["cifar10", "digits"]}
    md = markdown(result)
    assert ("Here, searched tasks: cifar10 (its training data, through cifar10_small), digits (its training data, "
            "through digits_cnn); held-out tasks: mnist.") in md
    assert "### cifar10 (searched)" in md and "### mnist (held-out)" in md


def test_a_contender_whose_tuning_all_diverged_is_marked_in_table_and_figures(tmp_path, monkeypatch):
    """Its 'tuned' lr is no tuning result, and its bar at chance is no trained accuracy: both must say so; the
    curve legend lists every contender even when one has no curve in the first panel."""
    import matplotlib.figure

    figures = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, *a, **k: (figures.append(self), save(self, *a, **k))[1])
    cs = default_contenders([("evo", EVOLVED)])
    result = _fake_result(cs, diverged={"evo", "rmsprop"})
    paths = write_outputs(result, tmp_path)
    task_table = paths["report"].read_text().split("### digits")[1].split("### Aggregate")[0]
    rows = {line.split(" | ")[0].strip("| *"): line for line in task_table.splitlines()
            if line.startswith("| ") and "tuned lr" not in line}
    assert "| *all diverged* |" in rows["evo"] and "| *all diverged* |" in rows["rmsprop"]
    assert "| 0.5000 |" in rows["adam"] and "all diverged" not in rows["adam"]
    assert "every tuning trial of that contender diverged" in paths["report"].read_text()
    bars, curves = figures
    bar_notes = [t.get_text() for t in bars.axes[0].texts]
    assert bar_notes == ["2/2 diverged", "2/2 diverged"]
    assert [t.get_text() for t in curves.legends[0].texts] == [c.name for c in cs]
    assert "evo 2/2" in curves.axes[0].texts[0].get_text() and "rmsprop 2/2" in curves.axes[0].texts[0].get_text()


def test_seeds_that_collapsed_to_chance_without_diverging_are_counted():
    """Tuned on one seed, an lr at the edge of stability can leave a final seed at chance with a finite loss:
    not diverged, but the reason an interval is wide, so the table and JSON say so."""
    result = _fake_result(default_contenders([("evo", EVOLVED)]), diverged={"rmsprop"}, collapsed={"adam"})
    md, js = markdown(result), result.to_json()
    rows = {line.split(" | ")[0].strip("| *"): line for line in md.split("### digits")[1].split("### Aggregate")[0]
            .splitlines() if line.startswith("| ")}
    assert rows["contender"].endswith("| diverged / at chance |")
    assert rows["adam"].endswith("| 0 / 1 |") and rows["rmsprop"].endswith("| 2 / 0 |") and rows["evo"].endswith("| 0 / 0 |")
    adam = js["tasks"]["digits"]["contenders"]["adam"]
    assert adam["at_chance"] == [True, False] and adam["diverged"] == [False, False]
    assert js["tasks"]["digits"]["contenders"]["rmsprop"]["at_chance"] == [False, False]


def test_start_grid_spans_the_window_evenly_and_never_repeats_the_default():
    c = next(c for c in default_contenders([("evo", EVOLVED)]) if c.name == "adamw")
    lo, hi = c.lr_range
    start = c.startup_params(6)
    assert start[0] == c.default_params()
    lrs = [p["lr_log10"] for p in start[1:]]
    # Six cells of 2/3 decade; the default (lo + 2) is equally near lo + 5/3 and lo + 7/3: the lower one goes.
    assert lrs == pytest.approx([lo + 1 / 3, lo + 1, lo + 7 / 3, lo + 3, lo + 11 / 3])
    assert all(p["wd_log10"] == c.wd_log10 for p in start)
    assert c.startup_params(1) == [c.default_params()]
    # Lion's default (10^-4) sits one decade above its window's floor: no start point may repeat it.
    for c in default_contenders([("evo", EVOLVED)]):
        for n in (2, 3, 4, 6, 8):
            xs = [p["lr_log10"] for p in c.startup_params(n)]
            assert len(xs) == n and min(abs(a - b) for i, a in enumerate(xs) for b in xs[i + 1:]) > 0.1, (c.name, n, xs)
    assert [rounds(n) for n in (1, 2, 4, 8)] == [[1], [2], [3, 4], [6, 8]]
