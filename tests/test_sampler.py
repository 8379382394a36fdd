"""GeneticSampler on synthetic objectives (a known function of the genome's parameters; no training)."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from optsearch.errors import ConfigError
from optsearch.genome import ALPHA_RANGE, BASELINES, FLOAT_RANGES, K, NAMED, Genome, define_search_space
from optsearch.search.sampler import (
    AnnealedMutation,
    OnePointCrossover,
    TournamentSelection,
    GENERATION_KEY,
    MEMBER_KEY,
    ORIGIN_KEY,
    PARENTS_KEY,
    REPLACED_KEY,
    SPACE,
    GAConfig,
    generation_and_member,
    GeneticSampler,
    mutate,
    one_point_crossover,
    random_params,
    rank_by_fitness,
    rank_nsga2,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

Decide = Callable[[optuna.Trial, Genome], "TrialState | None"]


def single(g: Genome) -> float:
    """Best at lr 10^-2.5, β1 = 0.5, ε = 10^-7: a smooth bowl over three genes."""
    return -((g.lr_log10 + 2.5) ** 2) - (g.beta1 - 0.5) ** 2 - ((g.eps_log10 + 7) / 6) ** 2


def penalty(g: Genome) -> float:
    """In [0, 1]: how far β1, β2, ε, warmup_frac and α_0 are from their targets (random genomes: ≈ 0.6)."""
    d = [
        abs(g.beta1 - 0.5) / 0.5,
        abs(g.beta2 - 0.9) / 0.1,
        abs(g.eps_log10 + 7) / 3,
        abs(g.warmup_frac - 0.15) / 0.15,
        abs(g.alphas[0] - 2.0) / 2.0,
    ]
    return sum(math.sqrt(min(1.0, x)) for x in d) / len(d)


def two(g: Genome) -> tuple[float, float]:
    """Two conflicting objectives over x = position of lr in its range; the front is where penalty = 0."""
    x = (g.lr_log10 - FLOAT_RANGES["lr_log10"][0]) / (FLOAT_RANGES["lr_log10"][1] - FLOAT_RANGES["lr_log10"][0])
    return x - penalty(g), 1.0 - math.sqrt(x) - penalty(g)


def make_study(population: int = 8, seed: int = 0, directions: int = 1, **cfg) -> optuna.Study:
    sampler = GeneticSampler(population_size=population, seed=seed, config=GAConfig.from_dict(cfg))
    return optuna.create_study(directions=["maximize"] * directions, sampler=sampler)


def by_generation(study: optuna.Study) -> dict[int, list[FrozenTrial]]:
    out: dict[int, list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        out.setdefault(t.system_attrs[GENERATION_KEY], []).append(t)
    return dict(sorted(out.items()))


def drive(study: optuna.Study, generations: int, objective: Callable, decide: Decide | None = None) -> None:
    """The run loop's shape: ask a generation's missing members as a batch, then tell them all."""
    p = study.sampler.population_size
    while True:
        gens = by_generation(study)
        latest = max(gens, default=-1)
        alive = [t for t in gens.get(latest, []) if t.state != TrialState.FAIL]
        if latest >= 0 and len(alive) < p:
            n = p - len(alive)  # refill the slots FAIL trials freed
        elif latest + 1 >= generations:
            return
        else:
            n = p
        trials = [study.ask() for _ in range(n)]
        genomes = [define_search_space(t) for t in trials]
        for t, g in zip(trials, genomes):
            state = decide(t, g) if decide else None
            if state is None:
                study.tell(t, objective(g))
            else:
                study.tell(t, state=state)


def gene_params(t: FrozenTrial) -> dict:
    return {n: t.params[n] for n in SPACE}


def dominates(a: tuple, b: tuple) -> bool:
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def nd_ranks(values: list[tuple]) -> list[int]:
    """Brute-force non-domination ranks (0 = first front), for checking the sampler's."""
    ranks = [-1] * len(values)
    r = 0
    while -1 in ranks:
        left = [i for i in range(len(values)) if ranks[i] == -1]
        front = [i for i in left if not any(dominates(values[j], values[i]) for j in left if j != i)]
        for i in front:
            ranks[i] = r
        r += 1
    return ranks


def hypervolume_2d(points: list[tuple], ref: tuple = (-1.0, -1.0)) -> float:
    """Area dominated by ``points`` (maximized) above ``ref``."""
    pts = sorted({p for p in points if p[0] > ref[0] and p[1] > ref[1]}, key=lambda p: -p[0])
    area, best_y = 0.0, ref[1]
    for x, y in pts:  # sweep from the largest x: each point adds the strip its y gains
        if y > best_y:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return area


# ----------------------------------------------------------------------------- config
def test_gaconfig_defaults_and_round_trip():
    cfg = GAConfig.from_dict({})
    assert cfg == GAConfig()
    custom = GAConfig.from_dict({"tournament_size": 5, "elites": 3, "mutation_prob": 0.3, "seed_paper_evolved": True})
    assert GAConfig.from_dict(custom.to_dict()) == custom
    assert isinstance(GAConfig.from_dict({"crossover_prob": 1}).crossover_prob, float)


@pytest.mark.parametrize(
    "table, word",
    [
        ({"tournament_size": -1}, "tournament_size"),
        ({"tournament_size": 0}, "tournament_size"),
        ({"tournament_size": 2.5}, "tournament_size"),
        ({"elites": True}, "elites"),
        ({"crossover_prob": 1.5}, "crossover_prob"),
        ({"mutation_prob": "high"}, "mutation_prob"),
        ({"mutation_decay": 0.0}, "mutation_decay"),
        ({"log_sigma": float("nan")}, "log_sigma"),
        ({"seed_paper_evolved": "yes"}, "seed_paper_evolved"),
        ({"mutation_prob": 0.01, "mutation_floor": 0.05}, "mutation_floor"),
        ({"tournament": 3}, "tournament"),
    ],
)
def test_gaconfig_rejects_bad_values(table, word):
    with pytest.raises(ConfigError, match=word) as e:
        GAConfig.from_dict(table)
    assert "\n" not in str(e.value)


def test_elites_must_leave_room_for_children():
    with pytest.raises(ConfigError, match="elites"):
        GeneticSampler(population_size=4, seed=0, config={"elites": 4})


# ----------------------------------------------------------------------------- first generation
def test_first_generation_opens_with_the_baselines():
    study = make_study(population=7, seed_paper_evolved=True)
    drive(study, 1, single)
    gen0 = sorted(by_generation(study)[0], key=lambda t: t.system_attrs[MEMBER_KEY])
    names = [*BASELINES, "paper_evolved"]
    for t, name in zip(gen0, names):
        assert gene_params(t) == NAMED[name].to_params()
        assert t.system_attrs[ORIGIN_KEY] == f"seed:{name}"
    rest = gen0[len(names):]
    assert len(rest) == 2 and all(t.system_attrs[ORIGIN_KEY] == "random" for t in rest)
    assert all(gene_params(t) not in [NAMED[n].to_params() for n in NAMED] for t in rest)
    assert [t.system_attrs[MEMBER_KEY] for t in gen0] == list(range(7))

    plain = make_study(population=6)
    drive(plain, 1, single)
    assert gene_params(by_generation(plain)[0][4]) != NAMED["paper_evolved"].to_params()


def test_random_params_cover_the_space():
    rng = np.random.default_rng(0)
    draws = [random_params(rng) for _ in range(300)]
    for p in draws:
        Genome.from_params(p)
    lrs = [p["lr_log10"] for p in draws]
    assert min(lrs) < -4.5 and max(lrs) > -1.0  # uniform over [-5, -0.5]
    assert {p["term_0"] for p in draws} == set(SPACE["term_0"].choices)
    clips = [math.log10(p["clip_threshold"]) for p in draws]
    assert min(clips) < -1.5 and max(clips) > 0.5  # log-uniform over [0.01, 10]


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_genomes_whatever_the_ask_order():
    a = make_study(seed=11)
    drive(a, 3, single)
    # The same seed, but each member told before the next is asked: the genomes must not change.
    b = make_study(seed=11)
    for _ in range(3 * 8):
        t = b.ask()
        b.tell(t, single(define_search_space(t)))
    pa = [(t.system_attrs[GENERATION_KEY], t.system_attrs[MEMBER_KEY], gene_params(t)) for t in a.trials]
    pb = [(t.system_attrs[GENERATION_KEY], t.system_attrs[MEMBER_KEY], gene_params(t)) for t in b.trials]
    assert len(pa) == 24 and pa == pb
    assert {g for g, _, _ in pa} == {0, 1, 2}

    c = make_study(seed=12)
    drive(c, 3, single)
    assert [gene_params(t) for t in c.trials][4:] != [p for _, _, p in pa][4:]


# ----------------------------------------------------------------------------- elitism
def test_elites_survive_and_best_never_drops():
    study = make_study(population=8, elites=2)
    drive(study, 5, single)
    gens = by_generation(study)
    best = []
    for g, trials in gens.items():
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        best.append(max(t.value for t in done))
        if g + 1 in gens:
            top2 = sorted(done, key=lambda t: -t.value)[:2]
            nxt = sorted(gens[g + 1], key=lambda t: t.system_attrs[MEMBER_KEY])
            assert [gene_params(t) for t in nxt[:2]] == [gene_params(t) for t in top2]
            assert [t.system_attrs[ORIGIN_KEY] for t in nxt[:2]] == ["elite", "elite"]
            assert [t.system_attrs[PARENTS_KEY] for t in nxt[:2]] == [[t.number] for t in top2]
            children = nxt[2:]
            assert all(t.system_attrs[ORIGIN_KEY] in ("crossover", "mutation") for t in children)
    assert all(b >= a for a, b in zip(best, best[1:])), best
    assert best[-1] > best[0]  # and the search made progress over the seeded baselines


def test_children_differ_from_their_parents():
    study = make_study(population=8, crossover_prob=0.0, mutation_prob=0.0, mutation_floor=0.0)
    drive(study, 3, single)
    by_number = {t.number: t for t in study.trials}
    children = [t for t in study.trials if t.system_attrs[ORIGIN_KEY] == "mutation"]
    assert len(children) == 12
    for c in children:  # with no crossover and no mutation a child would be a clone; it is not
        assert all(gene_params(c) != gene_params(by_number[p]) for p in c.system_attrs[PARENTS_KEY])


# ----------------------------------------------------------------------------- who may breed
def test_pruned_and_failed_trials_never_become_parents():
    failed_once: set[tuple[int, int]] = set()

    def decide(trial: optuna.Trial, g: Genome):
        gen, member = generation_and_member(trial.study, trial)
        if member == 3 and (gen, member) not in failed_once:  # a killed worker, once per generation
            failed_once.add((gen, member))
            return TrialState.FAIL
        if member % 2 == 1:  # half of every generation is pruned
            return TrialState.PRUNED
        return None

    study = make_study(population=10, elites=2, tournament_size=4)
    drive(study, 4, single, decide)
    gens = by_generation(study)
    by_number = {t.number: t for t in study.trials}
    n_children = 0
    for g in range(1, 4):
        assert any(t.state == TrialState.PRUNED for t in gens[g - 1])
        assert any(t.state == TrialState.FAIL for t in gens[g - 1])
        for child in gens[g]:
            for p in child.system_attrs[PARENTS_KEY]:
                parent = by_number[p]
                assert parent.state == TrialState.COMPLETE, (child.number, p, parent.state)
                assert parent.system_attrs[GENERATION_KEY] == g - 1
                n_children += 1
    assert n_children > 20
    # some pruned members would have been tempting parents: better than a member that did breed
    pruned = [single(Genome.from_params(t.params)) for t in study.trials if t.state == TrialState.PRUNED]
    bred = [by_number[p].value for t in study.trials for p in t.system_attrs[PARENTS_KEY]]
    assert max(pruned) > min(bred)


def test_diverged_members_rank_last():
    study = optuna.create_study(directions=["maximize", "maximize"])
    for vals in [(0.2, 0.9), (-1.0, -1.0), (0.9, 0.1), (0.5, 0.5), (0.4, 0.4)]:
        study.add_trial(optuna.trial.create_trial(values=list(vals), params={}, distributions={}))
    ranked = rank_nsga2(study.trials, study.directions)
    assert ranked[-1].values == [-1.0, -1.0]
    assert [t.values for t in ranked[-2:-1]] == [[0.4, 0.4]]

    single_study = optuna.create_study(direction="maximize")
    for v in [0.3, -1.0, 0.0, 0.8]:
        single_study.add_trial(optuna.trial.create_trial(value=v, params={}, distributions={}))
    assert [t.value for t in rank_by_fitness(single_study.trials, single_study.directions)] == [0.8, 0.3, 0.0, -1.0]


# ----------------------------------------------------------------------------- refilling
def test_failed_slot_is_refilled_in_the_same_generation():
    study = make_study(population=6)
    trials = [study.ask() for _ in range(6)]
    genomes = [define_search_space(t) for t in trials]
    for i, (t, g) in enumerate(zip(trials, genomes)):
        study.tell(t, state=TrialState.FAIL) if i == 5 else study.tell(t, single(g))  # member 5: random genome
    study.tell(trials[2], state=TrialState.FAIL, skip_if_finished=True)  # already told: stays COMPLETE

    refill = study.ask()
    g = define_search_space(refill)
    assert generation_and_member(study, refill) == (0, 5)
    assert g.to_params() == genomes[5].to_params()  # the freed slot is asked the same genome again
    study.tell(refill, state=TrialState.PRUNED)  # PRUNED fills a slot: the generation is now full

    nxt = study.ask()
    define_search_space(nxt)
    assert generation_and_member(study, nxt) == (1, 0)


def test_running_members_hold_their_slots_and_target_generation_wins():
    sampler = GeneticSampler(population_size=3, seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    asked = [study.ask() for _ in range(4)]  # nothing told yet: RUNNING trials count
    assert [generation_and_member(study, t) for t in asked] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    sampler.target_generation = 0  # the run loop decides: this one joins generation 0
    extra = study.ask()
    assert generation_and_member(study, extra) == (0, 3)


def test_unknown_parameters_fall_back_to_random_sampling():
    study = make_study(population=4)
    t = study.ask()
    define_search_space(t)
    x = t.suggest_float("not_a_gene", 3.0, 4.0)
    assert 3.0 <= x <= 4.0


def test_fixed_genes_hold_in_every_member_and_the_rest_still_evolves():
    """A shared training recipe: genes held by the sampler, never crossed over or mutated, seeds included."""
    recipe = {"warmup": True, "warmup_frac": 0.1, "cosine_decay": True, "clip": "norm", "clip_threshold": 1.0}
    sampler = GeneticSampler(population_size=6, seed=0, config={"mutation_prob": 0.5}, fixed_params=recipe)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    drive(study, 3, single)
    assert all({n: t.params[n] for n in recipe} == recipe for t in study.trials)
    assert study.trials[1].system_attrs[ORIGIN_KEY] == "seed:adam"  # the baselines take the recipe too
    assert len({t.params["lr_log10"] for t in study.trials}) > 6
    assert {t.system_attrs[ORIGIN_KEY] for t in study.trials} >= {"crossover", "elite"}
    with pytest.raises(ConfigError, match="not genes"):
        GeneticSampler(population_size=4, fixed_params={"momentum": 0.9})
    with pytest.raises(ConfigError, match="outside"):
        GeneticSampler(population_size=4, fixed_params={"warmup_frac": 2.0})


# ----------------------------------------------------------------------------- operators
def test_crossover_keeps_term_alpha_pairs():
    rng = np.random.default_rng(1)
    mixed = 0
    for _ in range(200):
        a, b = random_params(rng), random_params(rng)
        child = one_point_crossover(a, b, rng)
        sources = []
        for i in range(K):
            pair = (child[f"term_{i}"], child[f"alpha_{i}"])
            assert pair in ((a[f"term_{i}"], a[f"alpha_{i}"]), (b[f"term_{i}"], b[f"alpha_{i}"]))
            sources.append("a" if pair == (a[f"term_{i}"], a[f"alpha_{i}"]) else "b")
        assert sources[0] == "a" and sources[-1] == "b"  # one cut: a head from a, a tail from b
        assert "".join(sources) in ("abbb", "aabb", "aaab")
        for name in SPACE:
            if not name.startswith(("term_", "alpha_")):
                assert child[name] in (a[name], b[name])
        mixed += any(child[n] != a[n] for n in SPACE if not n.startswith(("term_", "alpha_")))
        Genome.from_params(child)
    assert mixed > 150  # scalars are mixed uniformly, not copied from one parent


def test_mutation_stays_in_range_and_anneals():
    cfg = GAConfig()
    rng = np.random.default_rng(2)
    lo_b, hi_b, _ = FLOAT_RANGES["warmup_frac"]
    for _ in range(300):
        p = random_params(rng)
        m = mutate(p, rng, rate=1.0, cfg=cfg)
        g = Genome.from_params(m)  # validates every range
        assert all(ALPHA_RANGE[0] <= a <= ALPHA_RANGE[1] for a in g.alphas)
        assert abs(m["warmup_frac"] - p["warmup_frac"]) <= cfg.beta_step * (hi_b - lo_b) + 1e-12
        assert m["weight_decay"] != p["weight_decay"] and m["clip"] != p["clip"]  # switches flip, clip changes

    rates = [cfg.mutation_rate(g) for g in range(200)]
    assert rates[0] == cfg.mutation_prob and all(b <= a for a, b in zip(rates, rates[1:]))
    assert rates[10] < rates[0] and rates[-1] == cfg.mutation_floor

    def changed(generation: int) -> float:
        r = np.random.default_rng(3)
        n = 0
        for _ in range(400):
            p = random_params(r)
            m = mutate(p, r, rate=cfg.mutation_rate(generation), cfg=cfg)
            n += sum(m[k] != p[k] for k in SPACE)
        return n / 400

    early, late = changed(0), changed(60)
    assert late < 0.5 * early, (early, late)


def test_mutation_never_removes_the_last_term():
    rng = np.random.default_rng(4)
    adam = NAMED["adam"].to_params()
    for _ in range(200):
        m = mutate(adam, rng, rate=1.0, cfg=GAConfig())
        assert any(m[f"term_{i}"] != "none" for i in range(K))


# ----------------------------------------------------------------------------- NSGA-II mode
def test_nsga_elites_are_the_first_fronts_and_beat_random_search():
    p, n_gen, elites = 16, 8, 4
    study = make_study(population=p, directions=2, elites=elites, seed=5)
    drive(study, n_gen, two)
    gens = by_generation(study)
    assert sorted(gens) == list(range(n_gen))
    sampler = study.sampler
    nondominated_elites = 0
    pool: list[FrozenTrial] = []
    for g in range(n_gen - 1):
        done = [t for t in gens[g] if t.state == TrialState.COMPLETE]
        newest = {tuple(sorted(gene_params(t).items())): t for t in [*pool, *done]}  # parents + children
        merged = list(newest.values())
        ranks = dict(zip((t.number for t in merged), nd_ranks([tuple(t.values) for t in merged])))
        pool = sampler.get_parent_population(study, g + 1)  # ranked, from the cache
        assert {t.number for t in pool} <= set(ranks) and len(pool) == min(p, len(merged))
        pool_ranks = [ranks[t.number] for t in pool]
        assert pool_ranks == sorted(pool_ranks)  # fronts in order
        left_out = [r for n, r in ranks.items() if n not in {t.number for t in pool}]
        assert max(pool_ranks) <= min(left_out, default=99)  # survival by front
        elite_ids = [t.number for t in pool[:elites]]
        nxt = sorted(gens[g + 1], key=lambda t: t.system_attrs[MEMBER_KEY])
        assert [t.system_attrs[PARENTS_KEY] for t in nxt[:elites]] == [[i] for i in elite_ids]
        front0 = [n for n, r in ranks.items() if r == 0]
        if len(front0) >= elites:  # the elites then form a non-dominated set
            vals = [tuple(by_num.values) for by_num in pool[:elites]]
            assert not any(dominates(u, v) for u in vals for v in vals)
            assert all(ranks[i] == 0 for i in elite_ids)
            nondominated_elites += 1
    assert nondominated_elites >= n_gen // 2

    # The evolved fronts dominate more than random search does with the same budget and seed.
    rnd = optuna.create_study(directions=["maximize"] * 2, sampler=optuna.samplers.RandomSampler(seed=5))
    for _ in range(p * n_gen):
        t = rnd.ask()
        rnd.tell(t, two(define_search_space(t)))
    hv = lambda ts: hypervolume_2d([tuple(t.values) for t in ts if t.state == TrialState.COMPLETE])
    hv_ga, hv_random = hv(study.trials), hv(rnd.trials)
    hv_first, hv_last = hv(gens[0]), hv(gens[n_gen - 1])
    assert hv_ga > hv_random, (hv_ga, hv_random)
    assert hv_last > hv_first, (hv_first, hv_last)


ASKER = """
import sys, time, optuna
from optsearch.search.sampler import GeneticSampler
from optsearch.genome import define_search_space
url, start, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
study = optuna.load_study(study_name="race", storage=optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}))
study.sampler = GeneticSampler(population_size=12, seed=0)
study.sampler.target_generation = 0
while time.time() < start:
    pass
for _ in range(n):
    define_search_space(study.ask())
"""


def test_concurrent_asks_never_share_a_member_slot(tmp_path):
    """Three processes ask 5 members each of a 12-member generation at the same instant."""
    import subprocess
    import sys
    import time

    url = f"sqlite:///{tmp_path}/race.db"
    optuna.create_study(study_name="race", storage=url, direction="maximize")
    start = time.time() + 3.0  # all three are imported and spinning by then
    procs = [subprocess.Popen([sys.executable, "-c", ASKER, url, str(start), "5"]) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    trials = optuna.load_study(study_name="race", storage=url).get_trials()
    members = sorted(t.system_attrs[MEMBER_KEY] for t in trials)
    assert members == list(range(15))  # 12 slots + 3 surplus, no index twice
    by_member = {t.system_attrs[MEMBER_KEY]: t.params for t in trials}
    seeds = [g.to_params() for _, g in GeneticSampler(population_size=12, seed=0).config.seed_genomes()]
    assert [by_member[i] for i in range(len(seeds))] == seeds  # the baselines, each once


# ----------------------------------------------------------------------------- NSGA-II survival (issue 13.1)
def three(g: Genome) -> tuple[float, float, float]:
    """Three conflicting objectives: lr position, its opposite, and β1."""
    x = (g.lr_log10 - FLOAT_RANGES["lr_log10"][0]) / (FLOAT_RANGES["lr_log10"][1] - FLOAT_RANGES["lr_log10"][0])
    return x, 1.0 - x, g.beta1


def _frozen(values: list[tuple], members: list[int] | None = None) -> list[FrozenTrial]:
    study = optuna.create_study(directions=["maximize"] * len(values[0]))
    for i, v in enumerate(values):
        attrs = {MEMBER_KEY: (members or list(range(len(values))))[i]}
        study.add_trial(optuna.trial.create_trial(values=list(v), params={}, distributions={}, system_attrs=attrs))
    return study.trials


def test_nsga_ranking_puts_each_objectives_best_first_not_the_lowest_member():
    # Members 0-2 are boundary points (worst on some objective: crowding +inf) of the one front;
    # the best point of each objective has a high member index.
    values = [(0.0, 0.5, 0.5), (0.5, 0.0, 0.5), (0.5, 0.5, 0.0), (0.4, 0.4, 0.4),
              (1.0, 0.1, 0.1), (0.1, 1.0, 0.1), (0.1, 0.1, 1.0)]
    trials = _frozen(values)
    directions = [optuna.study.StudyDirection.MAXIMIZE] * 3
    for seed in range(5):
        ranked = rank_nsga2(trials, directions, rng=np.random.default_rng(seed))
        assert {t.number for t in ranked[:3]} == {4, 5, 6}, [t.number for t in ranked]
    # ties in crowding distance are broken by the seeded RNG: reproducible, and not always member order
    orders = {tuple(t.number for t in rank_nsga2(trials, directions, rng=np.random.default_rng(s))) for s in range(20)}
    assert len(orders) > 1
    again = [t.number for t in rank_nsga2(trials, directions, rng=np.random.default_rng(3))]
    assert again == [t.number for t in rank_nsga2(trials, directions, rng=np.random.default_rng(3))]


def test_nsga_survival_keeps_each_objectives_best_ever_and_is_mu_plus_lambda():
    p, n_gen = 8, 6
    study = make_study(population=p, directions=3, elites=2, seed=3)
    drive(study, n_gen, three)
    gens = by_generation(study)
    seen: list[FrozenTrial] = []
    for g in range(n_gen - 1):
        seen += [t for t in gens[g] if t.state == TrialState.COMPLETE]
        pool = study.sampler.get_parent_population(study, g + 1)
        assert len(pool) == min(p, len({tuple(sorted(gene_params(t).items())) for t in seen}))
        for k in range(3):  # the best point of every objective so far survives, whatever its generation
            assert max(t.values[k] for t in pool) == max(t.values[k] for t in seen), (g, k)
        # real survival: the pool is the best of parents + children, not only the last generation
        if g > 0:
            assert any(t.system_attrs[GENERATION_KEY] < g for t in pool) or all(
                t.system_attrs[GENERATION_KEY] == g for t in pool)
        ranks = nd_ranks([tuple(t.values) for t in pool])
        assert ranks == sorted(ranks)  # fronts in order


# ----------------------------------------------------------------------------- a slot that always fails (13.4)
def test_a_slot_that_always_fails_gets_a_fresh_child_after_the_retry_cap():
    bad = NAMED[BASELINES[0]].to_params()  # generation 0, member 0

    def objective(trial: optuna.Trial) -> float:
        g = define_search_space(trial)
        if g.to_params() == bad:
            raise RuntimeError("this genome always fails")
        return single(g)

    study = make_study(population=4, slot_retries=2)
    study.optimize(objective, n_trials=12, catch=(RuntimeError,))
    slot = [t for t in study.trials if t.system_attrs[GENERATION_KEY] == 0 and t.system_attrs[MEMBER_KEY] == 0]
    assert [t.state for t in slot] == [TrialState.FAIL] * 3 + [TrialState.COMPLETE]
    assert all(gene_params(t) == bad for t in slot[:3])
    fresh = slot[3]
    assert gene_params(fresh) != bad and fresh.system_attrs[ORIGIN_KEY] == "random"
    assert "failed 3 times" in fresh.system_attrs[REPLACED_KEY]
    assert 1 in by_generation(study)  # the study moved on
    assert len([t for t in study.trials if t.state == TrialState.FAIL]) == 3


def test_slot_retries_is_validated():
    assert GAConfig().slot_retries == 2
    with pytest.raises(ConfigError, match="slot_retries"):
        GAConfig.from_dict({"slot_retries": -1})


# ----------------------------------------------------------------------------- strategies (13.6)
def test_default_strategies_are_the_explicit_objects_and_keep_todays_genomes():
    cfg = GAConfig.from_dict({"tournament_size": 4, "swap_prob": 0.3})
    a = optuna.create_study(direction="maximize", sampler=GeneticSampler(population_size=8, seed=2, config=cfg))
    b = optuna.create_study(direction="maximize", sampler=GeneticSampler(
        population_size=8, seed=2, config=cfg, selection=TournamentSelection(size=4),
        crossover=OnePointCrossover(swap_prob=0.3), mutation=AnnealedMutation(config=cfg)))
    drive(a, 3, single)
    drive(b, 3, single)
    assert [gene_params(t) for t in a.trials] == [gene_params(t) for t in b.trials]
    with pytest.raises(TypeError):
        TournamentSelection(4)  # keyword-only, as Optuna's strategies


def test_a_swapped_strategy_is_used_without_subclassing():
    calls = []

    class Averaging:
        """A user's crossover: the child takes the mean learning rate of its parents, the rest from a."""

        def __call__(self, a, b, rng):
            calls.append((a["lr_log10"], b["lr_log10"]))
            return {**a, "lr_log10": (a["lr_log10"] + b["lr_log10"]) / 2}

    cfg = GAConfig.from_dict({"crossover_prob": 1.0, "mutation_prob": 0.0, "mutation_floor": 0.0})
    study = optuna.create_study(direction="maximize", sampler=GeneticSampler(
        population_size=6, seed=1, config=cfg, crossover=Averaging(), selection=TournamentSelection(size=1)))
    drive(study, 2, single)
    children = [t for t in study.trials if t.system_attrs[ORIGIN_KEY] == "crossover"]
    assert len(children) == 4 and len(calls) == 4
    by_number = {t.number: t for t in study.trials}
    averaged = 0
    for c in children:
        pa, pb = (by_number[n].params["lr_log10"] for n in c.system_attrs[PARENTS_KEY])
        averaged += c.params["lr_log10"] == pytest.approx((pa + pb) / 2)
    assert averaged >= 3  # (a child that equals a parent gets one more gene changed: that may be its lr)


# ----------------------------------------------------------------------------- concurrency (13.3)
def test_optimize_with_threads_breeds_the_same_genomes_as_one_thread():
    """``study.optimize(n_jobs=3)`` asks generation g+1 while g still trains; parents wait until g is settled."""
    import random
    import time

    def slow(trial: optuna.Trial) -> float:
        g = define_search_space(trial)
        time.sleep(random.random() * 0.02)  # members finish in a random order
        return single(g)

    key = lambda t: (t.system_attrs[GENERATION_KEY], t.system_attrs[MEMBER_KEY])  # noqa: E731
    one = make_study(population=6, seed=4)
    one.optimize(slow, n_trials=18)
    many = make_study(population=6, seed=4)
    many.optimize(slow, n_trials=18, n_jobs=3)
    assert {key(t): gene_params(t) for t in many.trials} == {key(t): gene_params(t) for t in one.trials}
    assert sorted(key(t) for t in many.trials) == [(g, m) for g in range(3) for m in range(6)]


@pytest.mark.parametrize("objectives", [1, 2])
def test_the_parent_pool_ranks_by_difference_from_the_control_when_trials_carry_it(objectives):
    """Issue 23 item 4: an elite told 0.9 (a mean over earlier, easier seeds) is 0.0 above its controls; a child
    told 0.7 on this generation's hard seeds is +0.2: with relative values stored the child ranks first, in a
    single- and a two-objective (NSGA-II) pool alike; without them the told values decide, as before."""
    from optsearch.search.control import RELATIVE_ATTR

    told = [(0.9,) * objectives, (0.7,) * objectives]
    trials = _frozen(told)
    sampler = GeneticSampler(population_size=4, seed=0)
    directions = [optuna.study.StudyDirection.MAXIMIZE] * objectives
    assert [t.number for t in sampler.rank(trials, directions, 1)] == [0, 1]
    for t, rel in zip(trials, (0.0, 0.2)):
        t.user_attrs[RELATIVE_ATTR] = [rel] * objectives
    assert [t.number for t in sampler.rank(trials, directions, 1)] == [1, 0]
    assert trials[0].values == [0.9] * objectives  # the trials themselves are not changed
