"""The funnel: top-k genomes re-measured on meta-validation tasks with fresh seeds and an lr sweep; resumable."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from optsearch.cli import main
from optsearch.errors import ConfigError
from optsearch.genome import Genome, search_space
from optsearch.search import config as configs
from optsearch.search import funnel
from optsearch.search.noise import unit_seeds
from optsearch.search.storage import CONFIG_ATTR

CONFIG = """
[search]
tasks = ["digits"]
seeds = [0]
steps = {steps}
population = 4
generations = 1
checkpoint_every = 20
seed = 5
device = "cpu"
[pruning]
pruner = "none"
[sampler]
[funnel]
tasks = ["digits"]
steps = {funnel_steps}
seeds = 3
k = {k}
ablation = {ablation}
"""


def make_config(tmp_path: Path, *, steps: int = 30, funnel_steps: int = 40, k: int = 2, ablation: bool = True) -> Path:
    p = tmp_path / "f.toml"
    p.write_text(CONFIG.format(steps=steps, funnel_steps=funnel_steps, k=k, ablation=str(ablation).lower()))
    return p


def noise(task: str, seed: int, salt: str = "") -> float:
    """Deterministic pseudo-noise in [-0.01, 0.01) per (task, seed): shared by all members of a unit."""
    h = hashlib.sha256(f"{task}/{seed}/{salt}".encode()).digest()
    return (int.from_bytes(h[:4], "little") / 2**32 - 0.5) * 0.02


def meta_fitness(g: Genome) -> float:
    """The known meta-validation answer: best at lr 10^-2.5 with a sign_grad term, regardless of proxy scores."""
    return 0.8 - 0.2 * (g.lr_log10 + 2.5) ** 2 + 0.1 * ("sign_grad" in g.merged_terms())


class FakeEvaluator:
    """Stands in for optsearch.train.evaluate.evaluate: a known fitness per genome, counting units."""

    def __init__(self, fail_after: int | None = None):
        self.units: list[tuple[str, int]] = []
        self.fail_after = fail_after

    def __call__(self, genomes, tasks, seeds, spec):
        assert spec.split == "val" and len(tasks) == 1 and len(seeds) == 1
        if self.fail_after is not None and len(self.units) >= self.fail_after:
            raise KeyboardInterrupt  # as if the process were killed here
        self.units.append((tasks[0], seeds[0]))
        return SimpleNamespace(members=[SimpleNamespace(fitness=meta_fitness(g) + noise(tasks[0], seeds[0]))
                                        for g in genomes])


def synthetic_study(tmp_path: Path, genomes_told: list[tuple[Genome, float]], *, k: int = 3) -> tuple[optuna.Study, configs.StudyConfig]:
    """A finished one-generation study whose trials hold the given genomes and told (proxy) values."""
    cfg = configs.load(make_config(tmp_path, k=k))
    cfg = replace(cfg, population=len(genomes_told))
    st = optuna.create_study(study_name="syn", storage=f"sqlite:///{tmp_path}/syn.db", direction="maximize")
    st.set_user_attr(CONFIG_ATTR, cfg.to_dict())
    dists = search_space()
    for g, v in genomes_told:
        t = optuna.trial.create_trial(params=g.to_params(), distributions=dists, value=v,
                                      system_attrs={"GeneticSampler:generation": 0}, user_attrs={"generation": 0})
        st.add_trial(t)
    return st, cfg


ADAM = Genome.named("adam")
SIGN = Genome(terms=("adam", "sign_grad", "none", "none"), alphas=(1.0, 0.5, 0.0, 0.0), lr_log10=-3.0)
POPULATION = [
    (replace(ADAM, lr_log10=-2.5), 0.95),   # the proxy's best, second on meta-validation
    (replace(ADAM, lr_log10=-4.0), 0.90),   # poor everywhere but told high
    (SIGN, 0.60),                           # told worst; best on meta-validation once its lr is swept up by 0.5
    (replace(ADAM, lr_log10=-1.0), 0.50),   # not in the top 3
]


def test_funnel_picks_the_genome_best_on_meta_validation(tmp_path):
    st, cfg = synthetic_study(tmp_path, POPULATION, k=3)
    fake = FakeEvaluator()
    funnel.run_funnels(st, replace(cfg, funnel=replace(cfg.funnel, ablation=False)), device="cpu", data_dir=None,
                       evaluator=fake)
    r = funnel.final_round(st)
    assert r is not None and r.generation == 1
    assert [e.name for e in r.entries] == ["#2", "#0", "#1"]  # the told-worst of the top 3 wins
    assert r.winner.offset == 0.5 and r.winner.tuned.lr_log10 == pytest.approx(-2.5)
    assert r.reference is not None and r.reference.name == "adam"
    # the reference is Adam's rule with the winner's recipe, swept like the candidates on the same units
    assert r.reference.genome == Genome.named("adam").with_recipe(r.winner.tuned)
    # Both did best at the sweep's top (+0.5): each sweep was extended half a decade (+1.0, worse), so both bests
    # are interior. Three fresh seeds × one task: the candidates (3 × 3 lr variants at once), the winner's
    # extension, Adam's sweep and its extension, one evaluator call per unit each.
    assert len(r.units) == 3 and len(fake.units) == 4 * 3
    for e in (r.winner, r.reference):
        assert sorted(o for o, _, _ in e.by_variant) == [-0.5, 0.0, 0.5, 1.0] and e.offset == 0.5
    label, genome, source = funnel.study_winner(st)
    assert source == "funnel" and label == "syn#2-funnel" and genome == r.winner.tuned
    assert genome.merged_terms() == SIGN.merged_terms()
    # the headline compares it with lr-swept, recipe-matched Adam (Adam at -3.0 is swept to -2.5: diff 0.1)
    text = "\n".join(funnel.headline(st))
    assert "winner − Adam with the winner's recipe (lr-swept)" in text and "+0.1000 ± 0.0000" in text
    assert "did best at the sweep's" not in text  # no best at an end is left


def test_no_sweep_warning_when_the_winner_and_adam_are_inside_the_sweep(tmp_path):
    st, cfg = synthetic_study(tmp_path, POPULATION, k=3)
    f = replace(cfg.funnel, ablation=False, lr_sweep=(-0.5, 0.0, 0.5, 1.0))
    funnel.run_funnels(st, replace(cfg, funnel=f), device="cpu", data_dir=None, evaluator=FakeEvaluator())
    r = funnel.final_round(st)
    assert r.winner.offset == 0.5 and r.reference.offset == 0.5  # both inside the wider sweep
    assert "lr_sweep" not in "\n".join(funnel.headline(st))


class CosineEvaluator(FakeEvaluator):
    """meta_fitness plus 0.05 for cosine decay: the longer task wants a schedule the proxies never rewarded."""

    def __call__(self, genomes, tasks, seeds, spec):
        out = super().__call__(genomes, tasks, seeds, spec)
        for m, g in zip(out.members, genomes):
            m.fitness += 0.05 * g.cosine_decay
        return out


@pytest.mark.parametrize("sweep", [False, True])
def test_the_cosine_sweep_gives_a_winner_the_schedule_the_meta_task_wants(tmp_path, sweep):
    st, cfg = synthetic_study(tmp_path, POPULATION, k=3)
    f = replace(cfg.funnel, ablation=False, cosine_sweep=sweep)
    fake = CosineEvaluator()
    funnel.run_funnels(st, replace(cfg, funnel=f), device="cpu", data_dir=None, evaluator=fake)
    r = funnel.final_round(st)
    assert r.winner.name == "#2" and r.winner.offset == 0.5
    assert r.winner.tuned.cosine_decay is sweep and r.reference.tuned.cosine_decay is sweep
    # each candidate at 3 lr offsets, with its own schedule and (swept) the other one; the winner's best (+0.5) was
    # the top end, so one more lr; the reference runs the winner's schedule only, extended alike
    assert {len(e.by_variant) for e in r.entries[1:]} == {6 if sweep else 3}
    assert len(r.winner.by_variant) == (6 if sweep else 3) + 1 and len(r.reference.by_variant) == 3 + 1
    assert r.winner.mean == pytest.approx(funnel.read_round(st.user_attrs, 1).winner.mean)
    assert ("lr and cosine sweep" in "\n".join(funnel.headline(st))) is sweep
    _, genome, _ = funnel.study_winner(st)
    assert genome.cosine_decay is sweep


def test_no_funnel_falls_back_to_the_best_trial_and_claims_nothing(tmp_path):
    st, _ = synthetic_study(tmp_path, POPULATION)
    label, genome, source = funnel.study_winner(st)
    assert (label, source) == ("syn#0", "best trial") and genome == POPULATION[0][0]
    text = "\n".join(funnel.headline(st))
    assert "no funnel ran" in text and "±" not in text


def test_funnel_seeds_are_fresh_and_deterministic(tmp_path):
    cfg = configs.load(make_config(tmp_path))
    cfg = replace(cfg, generations=50, seeds=(0, 1, 2))
    seeds = funnel.fresh_seeds(cfg, "funnel/50", 5)
    assert len(set(seeds)) == 5 and seeds == funnel.fresh_seeds(cfg, "funnel/50", 5)
    assert not set(seeds) & {s for g in range(50) for s in unit_seeds(cfg, g)}
    assert seeds != funnel.fresh_seeds(replace(cfg, seed=cfg.seed + 1), "funnel/50", 5)
    assert set(seeds).isdisjoint(funnel.fresh_seeds(cfg, "ablation", 5))


def test_a_killed_funnel_resumes_without_redoing_finished_units(tmp_path):
    st, cfg = synthetic_study(tmp_path, POPULATION, k=3)
    cfg = replace(cfg, funnel=replace(cfg.funnel, ablation=False))
    with pytest.raises(KeyboardInterrupt):
        funnel.run_funnels(st, cfg, device="cpu", data_dir=None, evaluator=FakeEvaluator(fail_after=2))
    stored = {k: v for k, v in st.user_attrs.items() if k.startswith("funnel:1:unit:")}
    assert sorted(stored) == ["funnel:1:unit:0", "funnel:1:unit:1"] and funnel.final_round(st) is None
    assert funnel.study_winner(st)[2] == "best trial"  # an unfinished funnel does not decide anything
    rest = FakeEvaluator()
    funnel.run_funnels(st, cfg, device="cpu", data_dir=None, evaluator=rest)
    r = funnel.final_round(st)
    assert rest.units[0] == r.units[2]  # only the unfinished unit of the candidates' stage was trained again
    assert len(rest.units) == 1 + 3 * len(r.units)  # then the winner's extension, Adam's sweep and its extension
    assert {k: v for k, v in st.user_attrs.items() if k in stored} == stored
    assert r.winner.name == "#2"
    # nothing is left to do: no more training
    again = FakeEvaluator()
    funnel.run_funnels(st, cfg, device="cpu", data_dir=None, evaluator=again)
    assert again.units == []


def test_funnel_config(tmp_path):
    cfg = configs.load(make_config(tmp_path, k=5))
    f = cfg.funnel
    assert f.enabled and f.k == 5 and f.seeds == 3 and f.lr_sweep == (-0.5, 0.0, 0.5) and f.every == 0
    assert configs.StudyConfig.from_dict(cfg.to_dict()) == cfg
    assert not configs.preset("paper").funnel.enabled or configs.preset("paper").funnel.tasks
    head = make_config(tmp_path).read_text().partition("[funnel]")[0]
    p = tmp_path / "bad.toml"
    assert f.ablation_seeds is None and f.ablation_margin == 0.003  # the ablation: the funnel's seeds, at least 8
    assert len(funnel.units_for(cfg, "ablation", f.ablation_seeds)) == 3 * len(f.tasks)
    p = tmp_path / "abl.toml"
    p.write_text(make_config(tmp_path).read_text().partition("[funnel]")[0]
                 + "[funnel]\nablation_seeds = 5\nablation_margin = 0.02\ncosine_sweep = true\n")
    more = configs.load(p)
    assert more.funnel.cosine_sweep and more.funnel.ablation_margin == 0.02 and configs.StudyConfig.from_dict(more.to_dict()) == more
    assert len(funnel.units_for(more, "ablation", more.funnel.ablation_seeds)) == 5 * len(more.funnel.tasks)
    assert not f.cosine_sweep
    for body in ("seeds = 2", "k = 0", "ablation = 1", "cosine_sweep = 1", "lr_sweep = []", "bogus = 1", 'tasks = ["nope"]', "every = -1",
                 "ablation_seeds = 2", "ablation_margin = -0.1", 'ablation_margin = "x"'):
        p.write_text(head + "[funnel]\n" + body + "\n")
        with pytest.raises(ConfigError, match="funnel"):
            configs.load(p)
    p.write_text(head)
    assert not configs.load(p).funnel.enabled  # no [funnel] table: no funnel (as in studies made before it)


@pytest.mark.parametrize("name", ["quick", "cpu", "paper"])
def test_presets_load_with_a_funnel(name):
    cfg = configs.preset(name)
    assert cfg.funnel.enabled and cfg.funnel.seeds >= 3 and cfg.funnel.tasks


def test_cpu_preset_searches_rules_on_two_families_and_meta_validates_on_larger_unseen_tasks():
    from torch import nn

    from optsearch.train.sequence import TinyTransformer
    from optsearch.train.tasks import TASKS, same_data

    cfg = configs.preset("cpu")
    for tasks in (cfg.tasks, cfg.funnel.tasks):  # an image CNN and a transformer among the proxies, and in the funnel
        models = [TASKS[t].build_model() for t in tasks]
        assert any(any(isinstance(m, nn.Conv2d) for m in model.modules()) for model in models), tasks
        assert any(isinstance(model, TinyTransformer) for model in models), tasks
    assert not set(cfg.tasks) & set(cfg.funnel.tasks)  # the funnel is a meta-validation, not the proxy again
    for f in cfg.funnel.tasks:  # larger than the proxy of its family
        proxy = next(t for t in cfg.tasks if TASKS[t].traits.conv == TASKS[f].traits.conv)
        assert TASKS[f].traits.num_params > TASKS[proxy].traits.num_params, (f, proxy)
    assert not any(same_data(h, t) for h in ("mnist", "fashion_mnist") for t in {*cfg.tasks, *cfg.funnel.tasks})
    assert cfg.recipe == "shared" and cfg.fixed_genes["cosine_decay"] and cfg.sampler.get("seed_modern")
    assert cfg.pruning.pruner == "percentile" and cfg.funnel.ablation
    # ≥ 8 paired runs: each ablation seed is one run per funnel task
    assert cfg.funnel.ablation_seeds * len(cfg.funnel.tasks) >= 8 and 0 < cfg.funnel.ablation_margin <= 0.003


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "optsearch", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.mark.slow
def test_study_run_resumes_inside_the_funnel_after_sigkill(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/s.db"
    cfg = make_config(tmp_path, steps=30, funnel_steps=300, k=2, ablation=False)
    assert main(["study", "create", "f", "--config", str(cfg), "--storage", url]) == 0
    proc = _cli("study", "run", "f", "--storage", url, "--quiet")
    deadline = time.time() + 300
    st = optuna.load_study(study_name="f", storage=url)
    while time.time() < deadline:  # kill it once the funnel has finished its first unit
        if "funnel:1:unit:0" in st.user_attrs:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    else:
        pytest.fail("the funnel never finished a unit")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {k: v for k, v in st.user_attrs.items() if ":unit:" in k}
    assert "funnel:1:unit:2" not in before  # killed inside the funnel
    n_trials = len(st.trials)
    assert main(["study", "run", "f", "--storage", url, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "funnel after generation 1" in out and "winner − Adam" in out
    st = optuna.load_study(study_name="f", storage=url)
    assert len(st.trials) == n_trials  # the search was finished: no trial asked again
    assert {k: v for k, v in st.user_attrs.items() if k in before} == before
    r = funnel.final_round(st)
    assert r is not None and len(r.units) == 3


@pytest.mark.slow
def test_study_run_show_and_export_with_funnel_and_ablation(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/s.db"
    cfg = make_config(tmp_path, steps=30, funnel_steps=40, k=2)
    assert main(["study", "create", "f", "--config", str(cfg), "--storage", url]) == 0
    assert main(["study", "run", "f", "--storage", url, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "funnel after generation 1" in out and "simplified by ablation" in out
    st = optuna.load_study(study_name="f", storage=url)
    r = funnel.final_round(st)
    simple, raw = tmp_path / "s.json", tmp_path / "raw.json"
    assert main(["export", "f", "--storage", url, "-o", str(simple)]) == 0
    assert main(["export", "f", "--storage", url, "-o", str(raw), "--unsimplified"]) == 0
    assert Genome.load(raw) == r.winner.tuned
    assert Genome.load(simple) == funnel.study_winner(st)[1]
    import json

    prov = json.loads(simple.read_text())["provenance"]
    assert prov["source"] == "simplified" and prov["funnel"]["trial"] == r.winner.number
    assert prov["funnel"]["genome"] == r.winner.tuned.to_params() and "simplified_minus_adam" in prov
    assert len(prov["ablation"]) == len(ablation_rows(st))
    assert main(["study", "show", "f", "--storage", url]) == 0
    shown = capsys.readouterr().out
    assert "funnel after generation 1" in shown and "ablation of the funnel winner" in shown
    # the dashboard note and the analysis report carry the same section
    from optuna_dashboard import get_note

    note = get_note(st)
    assert "## The funnel: the study's answer" in note and "### Ablation of the winner" in note
    from optsearch.search import ablation

    assert ("| component | effect of removing it (95 % interval) | verdict |" in note) == bool(ablation.read(st).rows)
    assert note.count("optsearch-funnel-begin") == 1 and "# optsearch study `f`" in note  # the config part is kept
    assert "Then the funnel: the 2 best genomes and Adam" in note
    assert funnel.funnel_markdown(st) in note
    # the search figures' winner and lineage are the funnel winner's, not the proxy maximum's
    from optsearch.analysis.evolution import anatomy, read_members, winner_lineage

    members = read_members(st)
    assert anatomy(st, members).winner.number == r.winner.number
    assert r.winner.number in winner_lineage(st, members).roots


def test_intermediate_rounds_every_k_generations_and_no_ablation_before_the_end(tmp_path):
    from optsearch.search.run import funnel_stops

    st, cfg = synthetic_study(tmp_path, POPULATION, k=2)
    cfg = replace(cfg, generations=3, funnel=replace(cfg.funnel, every=1))
    assert funnel_stops(cfg, 0, 3) == [1, 2, 3] and funnel_stops(cfg, 1, 3) == [2, 3]
    assert funnel_stops(replace(cfg, funnel=replace(cfg.funnel, every=0)), 0, 3) == [3]
    fake = FakeEvaluator()
    funnel.run_funnels(st, cfg, device="cpu", data_dir=None, evaluator=fake)  # 1 of 3 generations done
    assert [r.generation for r in funnel.rounds(st)] == [1]
    assert not any(k.startswith("ablation:") for k in st.user_attrs)  # the ablation waits for the final round
    assert funnel.study_winner(st)[2] == "funnel" and funnel.final_round(st).winner.name == "#0"


def test_benchmark_takes_the_study_winner(tmp_path, monkeypatch):
    from optsearch.benchmark import runner

    st, cfg = synthetic_study(tmp_path, POPULATION, k=3)
    funnel.run_funnels(st, replace(cfg, funnel=replace(cfg.funnel, ablation=False)), device="cpu", data_dir=None,
                       evaluator=FakeEvaluator())
    seen = {}

    def fake_run_benchmark(name, evolved, bcfg, **kw):
        seen.update(evolved=evolved, searched=bcfg.searched)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_benchmark", fake_run_benchmark)
    with pytest.raises(KeyboardInterrupt):
        runner.run_cli("syn", storage=f"sqlite:///{tmp_path}/syn.db", tasks="digits", seeds=2)
    label, genome, _ = funnel.study_winner(st)
    assert seen["evolved"] == [(label, genome)] and label == "syn#2-funnel"


def test_no_funnel_round_without_a_completed_trial(tmp_path):
    st, cfg = synthetic_study(tmp_path, [])
    for g in (ADAM, SIGN):  # a finished generation whose members all diverged
        st.add_trial(optuna.trial.create_trial(params=g.to_params(), distributions=search_space(),
                                               state=optuna.trial.TrialState.PRUNED,
                                               system_attrs={"GeneticSampler:generation": 0}))
    funnel.run_funnels(st, replace(cfg, population=2), device="cpu", data_dir=None, evaluator=FakeEvaluator())
    assert funnel.final_round(st) is None and funnel.study_winner(st) is None
    assert not [k for k in st.user_attrs if k.startswith("funnel:")]


def ablation_rows(st: optuna.Study) -> tuple:
    from optsearch.search import ablation

    return ablation.read(st).rows


def test_candidates_key_genomes_from_before_the_sign_genes_as_the_same_genome():
    """A trial without the later sign genes and one with them at "none" measured one genome: one candidate."""
    g = Genome.named("adam")
    dists = search_space()
    full = g.to_params()
    old = {n: v for n, v in full.items() if n not in ("sign_term", "sign_alpha")}
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(params=old, distributions={n: dists[n] for n in old}, value=0.9))
    study.add_trial(optuna.trial.create_trial(params=full, distributions=dists, value=0.8))
    other = replace(g, lr_log10=-2.0).to_params()
    study.add_trial(optuna.trial.create_trial(params=other, distributions=dists, value=0.7))
    assert [(t.number, m) for t, m in funnel.candidates(study, 3)] == [(1, pytest.approx(0.85)), (2, 0.7)]


def test_the_reference_takes_the_winners_recipe_and_a_sweep_at_an_edge_extends_to_the_lr_range(tmp_path):
    """A winner with warmup, cosine decay and clipping: Adam runs with exactly that recipe. Fitness rising with lr
    for both: each sweep grows half a decade at a time until the genome's lr range ends, and the headline still
    says so (the only edge left is the range's)."""

    class Rising(FakeEvaluator):
        def __call__(self, genomes, tasks, seeds, spec):
            out = super().__call__(genomes, tasks, seeds, spec)
            for m, g in zip(out.members, genomes):
                m.fitness = g.lr_log10 + noise(tasks[0], seeds[0])
            return out

    recipe = dict(warmup=True, warmup_frac=0.2, cosine_decay=True, clip="norm", clip_threshold=0.5)
    best = replace(SIGN, lr_log10=-2.0, **recipe)
    st, cfg = synthetic_study(tmp_path, [(best, 0.9), (replace(ADAM, lr_log10=-3.0), 0.8)], k=2)
    fake = Rising()
    funnel.run_funnels(st, replace(cfg, funnel=replace(cfg.funnel, ablation=False)), device="cpu", data_dir=None,
                       evaluator=fake)
    r = funnel.final_round(st)
    assert r.winner.genome == best.canonical() and r.winner.tuned.lr_log10 == -0.5  # the range's top
    assert sorted(o for o, _, _ in r.winner.by_variant) == [-0.5, 0.0, 0.5, 1.0, 1.5]
    ref = r.reference
    assert ref.genome.recipe() == best.recipe() and ref.genome.merged_terms() == {"adam": 1.0}
    assert ref.tuned.lr_log10 == -0.5 and sorted(o for o, _, _ in ref.by_variant)[-1] == 2.5
    text = "\n".join(funnel.headline(st))
    assert "Adam did best at the sweep's highest lr" in text  # at the lr range's end: still said
    # a rerun redoes nothing: every stage is stored per unit
    n = len(fake.units)
    funnel.run_funnels(st, replace(cfg, funnel=replace(cfg.funnel, ablation=False)), device="cpu", data_dir=None,
                       evaluator=fake)
    assert len(fake.units) == n


def test_candidates_are_ranked_by_the_mean_over_all_measurements_pruned_ones_included(tmp_path):
    """A genome told 0.95 once but pruned low twice when re-measured ranks below a steady 0.8 one; two spellings
    of one genome (a silent gene) are one candidate."""
    dists = search_space()
    st = optuna.create_study(direction="maximize")
    lucky, steady = replace(ADAM, lr_log10=-2.0), replace(ADAM, lr_log10=-3.5)

    def add(g, value=None, last=None):
        st.add_trial(optuna.trial.create_trial(
            params=g.to_params(), distributions=dists, value=value,
            state=optuna.trial.TrialState.COMPLETE if last is None else optuna.trial.TrialState.PRUNED,
            intermediate_values=None if last is None else {0: last}))

    add(lucky, 0.95)
    add(replace(lucky, wd_log10=-5.0), last=0.5)  # weight decay is off: the same genome, pruned at 0.5
    add(lucky, last=0.4)
    add(steady, 0.8)
    ranked = funnel.candidates(st, 3)
    assert [(t.number, round(m, 4)) for t, m in ranked] == [(3, 0.8), (0, round((0.95 + 0.5 + 0.4) / 3, 4))]


def test_candidates_are_ranked_relative_to_their_generations_control():
    """Issue 23 item 4: a genome measured 0.9 on easy seeds (its generation's control 0.9) ranks below one
    measured 0.7 on hard seeds (control 0.5); a pruned re-measurement counts relative to the control's curve at
    its checkpoint. The study's best trial is ranked the same way."""
    from optsearch.search.control import CONTROL_ATTR, CONTROL_CURVE_ATTR, RELATIVE_ATTR
    from optsearch.search.generations import best_trials

    dists = search_space()
    st = optuna.create_study(direction="maximize")
    easy, hard = replace(ADAM, lr_log10=-2.0), replace(ADAM, lr_log10=-3.5)

    def add(g, generation, control, value=None, last=None):
        attrs = {"generation": generation, CONTROL_ATTR: [control], CONTROL_CURVE_ATTR: {"fitness": [control]}}
        if value is not None:
            attrs[RELATIVE_ATTR] = [value - control]
        st.add_trial(optuna.trial.create_trial(
            params=g.to_params(), distributions=dists, value=value, user_attrs=attrs,
            state=optuna.trial.TrialState.COMPLETE if last is None else optuna.trial.TrialState.PRUNED,
            intermediate_values=None if last is None else {0: last}))

    add(easy, 0, 0.9, 0.9)
    add(hard, 1, 0.5, 0.7)
    add(hard, 2, 0.6, last=0.7)  # pruned at checkpoint 0, where the control stood at 0.6: +0.1
    ranked = funnel.candidates(st, 2)
    assert [(t.number, round(m, 4)) for t, m in ranked] == [(1, 0.15), (0, 0.0)]
    assert best_trials(st, 1)[0].number == 1  # raw, trial 0 (0.9) would be the best
