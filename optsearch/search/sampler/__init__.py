"""GeneticSampler: an Optuna sampler that breeds genomes a generation at a time.

Two layers. The generic core — generations, elitism, tournament selection, NSGA-II survival, per-member
random streams, slot claims and retries, fixed parameters — is
:class:`~optsearch.search.sampler.package.samplers.genetic_algorithm.GeneticAlgorithmSampler`, an
OptunaHub package (``package/samplers/genetic_algorithm/``, self-contained: optuna and numpy only) for any
static space of float/int/categorical distributions. :class:`GeneticSampler` (:mod:`.genetic`) is that core
over the static genome space of :func:`optsearch.genome.search_space`, with the genome's strategies passed
by keyword: :mod:`.space` (gene groups, which genes are expressed), :mod:`.config` (the ``[sampler]``
table), :mod:`.crossover`, :mod:`.mutation`; :mod:`.ranking`, :mod:`.selection` and :mod:`.slots`
re-export the core's. A generation is ``population_size`` trials:

* generation 0: the named baselines (:data:`optsearch.genome.BASELINES`, optionally the paper's
  evolved genome) as the first members, the rest uniform over the space;
* generation g+1: the ``elites`` best of its parent pool carried over unchanged as the first members
  (and measured again there, on that generation's fresh seeds), the rest children: two tournament
  winners, structure-respecting crossover, annealed mutation. Selection, crossover and mutation are
  strategy objects passed by keyword (:class:`TournamentSelection`, :class:`OnePointCrossover`,
  :class:`AnnealedMutation` by default), as ``NSGAIISampler(crossover=…)`` takes them; genes in
  ``fixed_params`` (a shared training recipe, say) are held at their values, never crossed over or mutated;
* a slot whose trial FAILs is asked again with the same genome up to ``slot_retries`` times, then
  filled with a fresh child from a new random stream (the reason is stored in :data:`REPLACED_KEY`),
  so a genome that always crashes cannot stall the study.

In a study with a control member (:mod:`optsearch.search.control`) the parent pool is ranked by each
trial's stored value relative to its generation's control, not by its told value: an elite's told value
averages raw scores from generations on other seeds.

Only generation g's COMPLETE trials are parents: PRUNED and FAIL trials never breed. The run loop
tells a diverged or pruned member PRUNED, so it never breeds; a trial told the worst fitness
(−1) as a value would simply rank last.

**Per-task objectives (NSGA-II) live inside this sampler**, not in ``optuna.samplers.NSGAIISampler``
with our crossover and mutation. In a multi-objective study the only thing that changes is the
*ranking* and *survival*: the parent pool of generation g+1 is the best ``population_size`` of
generation g's pool and generation g's COMPLETE members together (NSGA-II's (μ+λ) survival), ranked
by non-dominated front, then each objective's best point, then crowding distance, with ties broken
by an RNG seeded from (seed, generation) — never by member index (Optuna's own non-dominated sort and
crowding distance are reused). Tournament selection on that order is NSGA-II's crowded tournament,
and the elites are the first of it. Why not ``NSGAIISampler``:

* its generation bookkeeping counts only COMPLETE trials, so a generation with PRUNED members never
  fills, and its parent cache returns trials in id order, not rank order;
* it draws every child from one shared random stream, so the genomes depend on the order in which
  concurrent workers ask; ours derive each member's stream from (seed, generation, member index);
* its crossover treats parameters independently (a term would be separated from its α) and its
  mutation has no annealing. Replacing all of that through its ``child_generation_strategy`` hook
  would leave little of it but the name.

Determinism: with a seed, the genome of member i of generation g is a function of the seed, g, i,
the parent pool and its slot's failure count; nothing depends on how many processes ask or in which
order. Generation g+1's pool is computed only once generation g has no RUNNING trial (an asker
waits), and slots are claimed in trial-number order (:mod:`.slots`).
"""

from __future__ import annotations

from optsearch.search.sampler.config import GAConfig
from optsearch.search.sampler.crossover import OnePointCrossover, one_point_crossover
from optsearch.search.sampler.genetic import GeneticSampler
from optsearch.search.sampler.mutation import AnnealedMutation, mutate, mutate_gene
from optsearch.search.sampler.ranking import rank_by_fitness, rank_nsga2, survivors
from optsearch.search.sampler.selection import TournamentSelection, tournament_select
from optsearch.search.sampler.slots import (
    CLAIM_WAIT, GENERATION_KEY, MEMBER_KEY, ORIGIN_KEY, PARENTS_KEY, REPLACED_KEY, generation_and_member,
)
from optsearch.search.sampler.space import SPACE, expressed_genes, random_params

__all__ = [
    "AnnealedMutation",
    "CLAIM_WAIT",
    "GAConfig",
    "GENERATION_KEY",
    "GeneticSampler",
    "MEMBER_KEY",
    "ORIGIN_KEY",
    "OnePointCrossover",
    "PARENTS_KEY",
    "REPLACED_KEY",
    "SPACE",
    "expressed_genes",
    "generation_and_member",
    "mutate",
    "mutate_gene",
    "one_point_crossover",
    "random_params",
    "rank_by_fitness",
    "rank_nsga2",
    "survivors",
    "TournamentSelection",
    "tournament_select",
]
