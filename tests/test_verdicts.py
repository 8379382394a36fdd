"""One verdict rule for every comparison the tool prints: "better"/"worse" only from a 95 % interval on runs
not used for selection, against a reference tuned to an interior optimum; else "not established" and why."""

from __future__ import annotations

from dataclasses import replace

import pytest

from optsearch import stats
from optsearch.benchmark.contenders import genome_contender
from optsearch.benchmark.report import _verdict, at_window_edge
from optsearch.benchmark.tuning import Tuned, rounds
from optsearch.genome import Genome
from optsearch.search import ablation, funnel
from optsearch.stats import NOT_ESTABLISHED, Interval, paired_difference, verdict
from tests.test_funnel import POPULATION, FakeEvaluator, synthetic_study

ABOVE = paired_difference([0.9, 0.92, 0.91], [0.8, 0.81, 0.79])  # excludes 0, above
BELOW = paired_difference([0.8, 0.81, 0.79], [0.9, 0.92, 0.91])
ACROSS = paired_difference([0.9, 0.8, 0.85], [0.85, 0.86, 0.84])
ONE = paired_difference([0.9], [0.8])


def test_better_and_worse_need_fresh_runs_and_an_interior_reference():
    assert verdict(ABOVE, selected_on_these_runs=False, reference_at_edge=False) == stats.Verdict("better")
    assert verdict(BELOW, selected_on_these_runs=False, reference_at_edge=False) == stats.Verdict("worse")
    assert verdict(ABOVE, selected_on_these_runs=False, reference_at_edge=False).text("Adam") == "better than Adam"


@pytest.mark.parametrize("diff, selected, edge, reason", [
    (ABOVE, True, False, "picked on these runs"),
    (BELOW, True, False, "picked on these runs"),
    (ABOVE, False, True, "a best lr at an end of its sweep"),
    (ACROSS, False, False, "interval includes 0"),
    (ONE, False, False, "too few runs for an interval"),
    (None, False, False, "too few runs for an interval"),
])
def test_each_reason_withholds_the_word(diff, selected, edge, reason):
    v = verdict(diff, selected_on_these_runs=selected, reference_at_edge=edge)
    assert v.word == NOT_ESTABLISHED and v.reason == reason and not v.established
    assert v.text("Adam") == f"not established: {reason}"


def test_funnel_headline_never_says_better_on_the_runs_that_picked_the_winner(tmp_path):
    """The issue's case: winner − Adam on the funnel's own runs excluded 0 and was printed "better than Adam"."""
    st, cfg = synthetic_study(tmp_path, POPULATION, k=3)
    funnel.run_funnels(st, replace(cfg, funnel=replace(cfg.funnel, ablation=False)), device="cpu", data_dir=None,
                       evaluator=FakeEvaluator())
    assert funnel.final_round(st).vs_reference().sign == 1  # the interval alone would say "better"
    text = "\n".join(funnel.headline(st))
    assert "better" not in text and "not established: picked on these runs" in text


def test_funnel_headline_on_ablation_runs_that_chose_the_simplification_withholds_the_word(tmp_path):
    st, cfg = synthetic_study(tmp_path, POPULATION, k=3)
    funnel.run_funnels(st, cfg, device="cpu", data_dir=None, evaluator=FakeEvaluator())
    assert any(r.dropped for r in ablation.read(st).rows)  # the parts to drop were picked on these runs
    line = next(x for x in funnel.headline(st) if x.startswith("simplified winner − Adam"))
    assert "better" not in line and "not established: picked on these runs" in line


def _tuned(lr_log10: float) -> Tuned:
    return Tuned(params={"lr_log10": lr_log10}, value=0.9, study_name="s", complete_trials=8, new_trials=0)


def test_benchmark_edge_of_the_tuning_window():
    adam = genome_contender("adam", Genome.named("adam"), "baseline")
    lo, hi = adam.lr_range
    cell = (hi - lo) / rounds(8)[0]
    assert at_window_edge(adam, _tuned(lo + cell / 2), 8) and at_window_edge(adam, _tuned(hi - cell / 2), 8)
    assert not at_window_edge(adam, _tuned((lo + hi) / 2), 8)
    assert at_window_edge(adam, _tuned((lo + hi) / 2), 1)  # one trial: only the default was tried


def test_benchmark_cells():
    scaled = Interval(ABOVE.mean, ABOVE.lo, ABOVE.hi, ABOVE.n, ABOVE.sd)
    assert _verdict(scaled, "evolved", at_edge=False) == "evolved better"
    assert _verdict(BELOW, "evolved", at_edge=False) == "evolved worse"
    assert _verdict(scaled, "evolved", at_edge=True) == "not established: a best lr at an end of its sweep"
    assert _verdict(ACROSS, "evolved", at_edge=False) == "not established: interval includes 0"
    assert _verdict(None, "evolved", at_edge=False) == "(reference)"


def test_ablation_says_a_removal_hurts_only_at_the_step_that_did_not_pick_the_genome():
    g = Genome.named("adam")
    rows = (ablation.Row("warmup", BELOW, False, 0), ablation.Row("bias correction", BELOW, False, 1))
    table = ablation.table(ablation.Ablation(g, g, rows, 2, None, 3))
    assert "| warmup |" in table[2] and "kept: removing it hurts" in table[2]
    assert "| bias correction |" in table[3] and "kept: not shown harmless" in table[3]
