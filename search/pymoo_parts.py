"""The search's evolutionary algorithm, assembled from pymoo: the pruning problem as a pymoo `Problem`, the
spread first population as a `Sampling`, snapping genes to their candidate lists as a `Repair`, the algorithms
`jcw search --algorithm` offers, a generation-by-generation driver (for the progress bar and Ctrl-C), and `HV`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling
from pymoo.indicators.hv import HV
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from .jcw_selection import JCWSurvival

#: `jcw search --algorithm` choices: the default is NSGA-II with JCW's target-wise survival (JCW's own search);
#: the others are pymoo's algorithms as pymoo ships them, on the same genes, sampling and operators.
ALGORITHMS = {
    "nsga2": "NSGA-II with JCW's target-wise selection (JCW's search, the default)",
    "nsga2-crowding": "NSGA-II with pymoo's rank-and-crowding survival",
    "nsga3": "NSGA-III (pymoo; Das-Dennis reference directions, one per individual)",
    "smsemoa": "SMS-EMOA (pymoo; least hypervolume contribution)",
    "spea2": "SPEA2 (pymoo; strength and density)",
}
# AGE-MOEA is not offered: pymoo's needs numba, which jcw does not depend on.


class PymooPruningProblem(Problem):
    """A `PruningProblem` (objectives [latency_ms, -accuracy], a latency-range violation) as pymoo sees it:
    integer gene indices in [xl, xu], evaluated a whole population per call, the violation as one
    inequality constraint only when the run has a latency range."""

    def __init__(self, pruning_problem) -> None:
        self.pruning_problem = pruning_problem
        self.gene_axes = np.asarray(getattr(pruning_problem, "gene_axes", np.zeros(pruning_problem.n_var, int)))
        constrained = getattr(pruning_problem, "latency_range", None) is not None
        super().__init__(n_var=pruning_problem.n_var, n_obj=2, n_ieq_constr=int(constrained),
                         xl=np.asarray(pruning_problem.xl), xu=np.asarray(pruning_problem.xu), vtype=int)

    def _evaluate(self, X, out, *args, **kwargs):
        # the repair leaves whole numbers; float arrays come from pymoo's own bookkeeping
        F, CV = self.pruning_problem.evaluate(np.asarray(np.floor(np.asarray(X) + 0.5), dtype=np.int64))
        out["F"] = F
        if self.n_ieq_constr:
            out["G"] = np.asarray(CV, dtype=np.float64)[:, None]


class GridRepair(Repair):
    """Snap genes to their candidate lists: round to the nearest index and clip to [xl, xu]. Crossover and
    mutation work on real numbers (SBX, PM); this puts their children back on the grid the genome means."""

    def _do(self, problem, X, **kwargs):
        return np.clip(np.floor(np.asarray(X, dtype=np.float64) + 0.5), problem.xl, problem.xu).astype(np.int64)


class SpreadSampling(Sampling):
    """Individuals spread over the latency range: each draws one pruning level in [0, 1] per gene axis
    (e.g. widths and densities, from the problem's `gene_axes`), stratified so the levels tile [0, 1],
    plus per-gene noise. Uniform genes would put every individual near the mean latency (a sum of
    many independent layers), leaving the cheap and the expensive ends unexplored; independent axes
    keep individuals that prune only one way in the first population. `keep_share`: the chance that a gene
    of a later axis (densities) stays at its top value — under the sparse engine density 1.0 is a different
    kernel (dense), not a slightly lighter sparse one, so the first population must hold both kinds (and
    the unpruned genome itself)."""

    def __init__(self, noise: float = 0.2, keep_share: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= keep_share < 1.0:
            raise ValueError(f"keep_share must be in [0, 1), got {keep_share!r}")
        self.noise, self.keep_share = noise, keep_share

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        rng = random_state if random_state is not None else np.random.default_rng()
        xl, xu = np.asarray(problem.xl), np.asarray(problem.xu)
        axes = np.asarray(getattr(problem, "gene_axes", np.zeros(problem.n_var, dtype=np.int64)))
        level = np.empty((n_samples, problem.n_var))
        for axis in np.unique(axes):
            strata = (rng.permutation(n_samples) + rng.random(n_samples)) / n_samples
            level[:, axes == axis] = strata[:, None]
        x = xl + (level + self.noise * rng.standard_normal((n_samples, problem.n_var))) * (xu - xl)
        x = np.clip(np.floor(x + 0.5), xl, xu).astype(np.int64)
        if self.keep_share:
            keep = (axes > 0)[None, :] & (rng.random((n_samples, problem.n_var)) < self.keep_share)
            x = np.where(keep, xu, x)
            x[0] = xu  # and the unpruned network itself: on x86 it often beats every sparse variant
        return x


def make_algorithm(name: str = "nsga2", pop_size: int = 64, sampling: Sampling | None = None):
    """The pymoo algorithm `name` (see ALGORITHMS) with the search's genes: spread sampling, SBX and PM on
    real numbers snapped back by GridRepair, duplicates eliminated."""
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {name!r}")
    # PM's eta 3 (pymoo's advice for integer variables): at its default 20 a gene of ~10 candidates seldom moves
    # a whole step, so rounding undoes most mutations (benchmarks/RESULTS.md, the search on pymoo)
    parts = dict(pop_size=pop_size, sampling=sampling or SpreadSampling(),
                 crossover=SBX(prob=0.9, eta=15, vtype=float, repair=GridRepair()),
                 mutation=PM(eta=3, vtype=float, repair=GridRepair()),
                 repair=GridRepair(), eliminate_duplicates=True)
    if name == "nsga2":
        from pymoo.algorithms.moo.nsga2 import NSGA2
        algorithm = NSGA2(**parts, survival=JCWSurvival())
        # parents by the rank and crowding JCW's survival gives them (JCW's tournament), not by pairwise dominance
        algorithm.tournament_type = "comp_by_rank_and_crowding"
        return algorithm
    if name == "nsga2-crowding":
        from pymoo.algorithms.moo.nsga2 import NSGA2
        return NSGA2(**parts)
    if name == "nsga3":
        from pymoo.algorithms.moo.nsga3 import NSGA3
        from pymoo.util.ref_dirs import get_reference_directions
        return NSGA3(ref_dirs=get_reference_directions("das-dennis", 2, n_partitions=pop_size - 1), **parts)
    if name == "smsemoa":
        from pymoo.algorithms.moo.sms import SMSEMOA
        return SMSEMOA(**parts)
    from pymoo.algorithms.moo.spea2 import SPEA2
    return SPEA2(**parts)


def feasible_front(F: np.ndarray, CV: np.ndarray) -> np.ndarray:
    """Indices of the feasible non-dominated rows of F, by rising first objective (latency)."""
    feasible = np.nonzero(np.asarray(CV) <= 0)[0]
    if not len(feasible):
        return feasible
    front = feasible[NonDominatedSorting().do(F[feasible], only_non_dominated_front=True)]
    return front[np.argsort(F[front, 0], kind="stable")]


@dataclass
class Result:
    """One finished generation: its population (genomes X, objectives F, violations CV), the evaluations
    so far and the generation's number."""
    X: np.ndarray
    F: np.ndarray
    CV: np.ndarray
    evaluations: int
    generations: int

    @property
    def front(self) -> np.ndarray:
        """Indices of the population's feasible non-dominated genomes, by rising latency."""
        return feasible_front(self.F, self.CV)


def evolve(algorithm, problem, n_gen: int, seed: int = 0,
           callback: Callable[[int, Result], None] | None = None) -> Result:
    """Run a pymoo `algorithm` on a PruningProblem for `n_gen` generations (the first population counts as
    generation 1) with pymoo's seeded random state, calling `callback(gen, result)` after each one."""
    if isinstance(n_gen, bool) or not isinstance(n_gen, int) or n_gen < 1:
        raise ValueError(f"n_gen must be an integer >= 1, got {n_gen!r}")
    algorithm.setup(PymooPruningProblem(problem), termination=("n_gen", n_gen), seed=seed, verbose=False)
    result, generation = None, 0
    while algorithm.has_next():
        algorithm.next()
        generation += 1     # counted here: pymoo's n_gen already names the next generation after next()
        X, F, CV = algorithm.pop.get("X", "F", "CV")
        result = Result(np.asarray(X, dtype=np.int64), np.asarray(F, dtype=np.float64),
                        np.asarray(CV, dtype=np.float64).reshape(-1), algorithm.evaluator.n_eval, generation)
        if callback:
            callback(generation, result)
    return result


def hypervolume(F: np.ndarray, reference) -> float:
    """pymoo's HV: the area (volume) that the rows of F dominate, bounded by `reference` (all minimised)."""
    F = np.atleast_2d(np.asarray(F, dtype=np.float64))
    F = F[(F < np.asarray(reference, dtype=np.float64)).all(axis=1)]
    return float(HV(ref_point=np.asarray(reference, dtype=np.float64))(F)) if len(F) else 0.0
