"""NSGA-II over integer genomes, built from swappable parts in the style of pymoo: sampling,
parent selection, SBX crossover and polynomial mutation snapped to the candidate lists, duplicate
elimination, and survival (rank + crowding here; JCW's target-wise survival in jcw_selection.py).

Objectives are minimised; CV > 0 marks a constraint violation (feasible always beats infeasible).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


# ---- ranking --------------------------------------------------------------------------------
def non_dominated_sort(F: np.ndarray) -> list[np.ndarray]:
    """Fronts of row indices, best first (a dominates b: <= everywhere and < somewhere)."""
    F = np.asarray(F, dtype=np.float64)
    n = F.shape[0]
    if n == 0:
        return []
    le = (F[:, None, :] <= F[None, :, :]).all(axis=2)
    lt = (F[:, None, :] < F[None, :, :]).any(axis=2)
    dominates = le & lt                      # dominates[i, j]: i dominates j
    dominated_by = dominates.sum(axis=0)
    fronts, remaining = [], np.ones(n, dtype=bool)
    current = np.nonzero(dominated_by == 0)[0]
    while current.size:
        fronts.append(current)
        remaining[current] = False
        dominated_by = dominated_by - dominates[current].sum(axis=0)
        current = np.nonzero((dominated_by == 0) & remaining)[0]
    return fronts


def constrained_fronts(F: np.ndarray, CV: np.ndarray | None = None) -> list[np.ndarray]:
    """Feasible rows by non-dominated fronts, then infeasible rows one per front by rising violation."""
    if CV is None:
        return non_dominated_sort(F)
    CV = np.asarray(CV)
    feasible = np.nonzero(CV <= 0)[0]
    fronts = [feasible[f] for f in non_dominated_sort(F[feasible])]
    infeasible = np.nonzero(CV > 0)[0]
    fronts += [np.array([i]) for i in infeasible[np.argsort(CV[infeasible], kind="stable")]]
    return fronts


def crowding_distance(F: np.ndarray) -> np.ndarray:
    """Deb's crowding distance within one front (extremes: infinity; objectives normalised by range)."""
    F = np.asarray(F, dtype=np.float64)
    n, m = F.shape
    if n <= 2:
        return np.full(n, np.inf)
    distance = np.zeros(n)
    for j in range(m):
        order = np.argsort(F[:, j], kind="stable")
        values = F[order, j]
        span = values[-1] - values[0]
        distance[order[0]] = distance[order[-1]] = np.inf
        if span > 0:
            distance[order[1:-1]] += (values[2:] - values[:-2]) / span
    return distance


def rank_and_crowding(F: np.ndarray, CV: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    rank, crowd = np.zeros(len(F), dtype=np.int64), np.zeros(len(F))
    for r, front in enumerate(constrained_fronts(F, CV)):
        rank[front] = r
        crowd[front] = crowding_distance(F[front])
    return rank, crowd


def hypervolume_2d(F: np.ndarray, reference) -> float:
    """Area dominated by the points of F (two minimised objectives) and bounded by `reference`."""
    F = np.asarray(F, dtype=np.float64)
    F = F[(F < np.asarray(reference)).all(axis=1)]
    if F.size == 0:
        return 0.0
    F = F[np.lexsort((F[:, 1], F[:, 0]))]
    area, best_y = 0.0, reference[1]
    for x, y in F:
        if y < best_y:
            area += (reference[0] - x) * (best_y - y)
            best_y = y
    return float(area)


# ---- parts ------------------------------------------------------------------------------------
class Problem(Protocol):
    n_var: int
    xl: np.ndarray
    xu: np.ndarray

    def evaluate(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class IntegerRandomSampling:
    """Each gene uniform over its allowed indices."""

    def __call__(self, problem: Problem, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(problem.xl, problem.xu + 1, size=(n, problem.n_var))


class SpreadSampling:
    """Individuals spread over the latency range: each draws one pruning level in [0, 1] per gene axis
    (e.g. widths and densities, from the problem's `gene_axes`), stratified so the levels tile [0, 1],
    plus per-gene noise. Uniform genes would put every individual near the mean latency (a sum of
    many independent layers), leaving the cheap and the expensive ends unexplored; independent axes
    keep individuals that prune only one way in the first population. `keep_share`: the chance that a gene
    of a later axis (densities) stays at its top value — under the sparse engine density 1.0 is a different
    kernel (dense), not a slightly lighter sparse one, so the first population must hold both kinds."""

    def __init__(self, noise: float = 0.2, keep_share: float = 0.0) -> None:
        if not 0.0 <= keep_share < 1.0:
            raise ValueError(f"keep_share must be in [0, 1), got {keep_share!r}")
        self.noise, self.keep_share = noise, keep_share

    def __call__(self, problem: Problem, n: int, rng: np.random.Generator) -> np.ndarray:
        axes = np.asarray(getattr(problem, "gene_axes", np.zeros(problem.n_var, dtype=np.int64)))
        level = np.empty((n, problem.n_var))
        for axis in np.unique(axes):
            strata = (rng.permutation(n) + rng.random(n)) / n
            level[:, axes == axis] = strata[:, None]
        span = problem.xu - problem.xl
        x = problem.xl + (level + self.noise * rng.standard_normal((n, problem.n_var))) * span
        x = np.clip(np.floor(x + 0.5), problem.xl, problem.xu).astype(np.int64)
        if self.keep_share:
            keep = (axes > 0)[None, :] & (rng.random((n, problem.n_var)) < self.keep_share)
            x = np.where(keep, problem.xu, x)
            x[0] = problem.xu  # and the unpruned network itself: on x86 it often beats every sparse variant
        return x


class BinaryTournament:
    """Pick the better of two random individuals: lower rank, then larger crowding distance."""

    def __call__(self, rank: np.ndarray, crowd: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        a, b = rng.integers(0, len(rank), size=(2, n))
        better_b = (rank[b] < rank[a]) | ((rank[b] == rank[a]) & (crowd[b] > crowd[a]))
        return np.where(better_b, b, a)


class SBX:
    """Simulated binary crossover on the gene indices, children snapped to the nearest allowed index."""

    def __init__(self, prob: float = 0.9, eta: float = 15.0, prob_var: float = 0.5) -> None:
        self.prob, self.eta, self.prob_var = prob, eta, prob_var

    def _spread(self, y1, y2, bound_gap, u):
        beta = 1.0 + 2.0 * bound_gap / (y2 - y1)
        alpha = 2.0 - beta ** -(self.eta + 1.0)
        small = u <= 1.0 / alpha
        return np.where(small, (u * alpha) ** (1.0 / (self.eta + 1.0)),
                        (1.0 / np.maximum(2.0 - u * alpha, 1e-12)) ** (1.0 / (self.eta + 1.0)))

    def __call__(self, parents_a, parents_b, xl, xu, rng: np.random.Generator) -> np.ndarray:
        a, b = parents_a.astype(np.float64), parents_b.astype(np.float64)
        n, m = a.shape
        c1, c2 = a.copy(), b.copy()
        active = (rng.random((n, 1)) < self.prob) & (rng.random((n, m)) < self.prob_var) & (np.abs(a - b) > 1e-9)
        y1, y2 = np.minimum(a, b), np.maximum(a, b)
        safe = np.where(active, y2 - y1, 1.0)
        y2s = y1 + safe
        u = rng.random((n, m))
        low = 0.5 * (y1 + y2s - self._spread(y1, y2s, y1 - xl, u) * safe)
        high = 0.5 * (y1 + y2s + self._spread(y1, y2s, xu - y2s, u) * safe)
        swap = rng.random((n, m)) < 0.5
        c1 = np.where(active, np.where(swap, high, low), c1)
        c2 = np.where(active, np.where(swap, low, high), c2)
        children = np.vstack([c1, c2])
        return np.clip(np.floor(children + 0.5), xl, xu).astype(np.int64)


class PolynomialMutation:
    """Polynomial mutation on gene indices; a mutated gene always moves at least one candidate step."""

    def __init__(self, prob: float | None = None, eta: float = 20.0) -> None:
        self.prob, self.eta = prob, eta

    def __call__(self, X: np.ndarray, xl, xu, rng: np.random.Generator) -> np.ndarray:
        n, m = X.shape
        prob = self.prob if self.prob is not None else 1.0 / m
        y = X.astype(np.float64)
        span = np.maximum(xu - xl, 1e-12).astype(np.float64)
        mutate = (rng.random((n, m)) < prob) & (xu > xl)
        u = rng.random((n, m))
        power = 1.0 / (self.eta + 1.0)
        d1, d2 = (y - xl) / span, (xu - y) / span
        left = (2 * u + (1 - 2 * u) * (1 - d1) ** (self.eta + 1)) ** power - 1
        right = 1 - (2 * (1 - u) + 2 * (u - 0.5) * (1 - d2) ** (self.eta + 1)) ** power
        delta = np.where(u < 0.5, left, right) * span
        step = np.floor(delta + 0.5)
        step = np.where(step == 0, np.where(u < 0.5, -1.0, 1.0), step)   # snapping must not undo the mutation
        moved = np.clip(y + step, xl, xu)
        moved = np.where(moved == y, np.clip(y - step, xl, xu), moved)  # at a bound: step the other way
        return np.where(mutate, moved, y).astype(np.int64)


class EliminateDuplicates:
    """Keep the first copy of each genome and drop genomes already in the population."""

    def __call__(self, X: np.ndarray, existing: np.ndarray | None = None) -> np.ndarray:
        _, first = np.unique(X, axis=0, return_index=True)
        keep = np.zeros(len(X), dtype=bool)
        keep[first] = True
        if existing is not None and len(existing):
            seen = {row.tobytes() for row in np.ascontiguousarray(existing)}
            keep &= np.array([row.tobytes() not in seen for row in np.ascontiguousarray(X)])
        return keep


class RankAndCrowdingSurvival:
    """NSGA-II survival: whole fronts first, the split front by crowding distance."""

    def __call__(self, F, CV, n_survive: int, rng: np.random.Generator) -> np.ndarray:
        chosen: list[int] = []
        for front in constrained_fronts(F, CV):
            if len(chosen) + len(front) <= n_survive:
                chosen.extend(front.tolist())
            else:
                crowd = crowding_distance(F[front])
                order = np.argsort(-crowd, kind="stable")
                chosen.extend(front[order[:n_survive - len(chosen)]].tolist())
            if len(chosen) >= n_survive:
                break
        return np.array(chosen, dtype=np.int64)


# ---- the algorithm -------------------------------------------------------------------------------
@dataclass
class Result:
    X: np.ndarray
    F: np.ndarray
    CV: np.ndarray
    evaluations: int
    generations: int
    history: list[dict] = field(default_factory=list)

    @property
    def front(self) -> np.ndarray:
        """Indices of the final population's feasible non-dominated genomes, by rising first objective."""
        fronts = constrained_fronts(self.F, self.CV)
        front = fronts[0] if fronts else np.array([], dtype=np.int64)
        front = front[self.CV[front] <= 0]
        return front[np.argsort(self.F[front, 0], kind="stable")]


class NSGA2:
    """NSGA-II with swappable parts; `survival` may be replaced by JCW's target-wise survival."""

    def __init__(self, pop_size: int = 64, sampling=None, selection=None, crossover=None, mutation=None,
                 survival=None, eliminate_duplicates=None, n_offsprings: int | None = None) -> None:
        if not isinstance(pop_size, int) or pop_size < 4:
            raise ValueError(f"pop_size must be an integer >= 4, got {pop_size!r}")
        self.pop_size = pop_size
        self.n_offsprings = n_offsprings or pop_size
        self.sampling = sampling or SpreadSampling()
        self.selection = selection or BinaryTournament()
        self.crossover = crossover or SBX()
        self.mutation = mutation or PolynomialMutation()
        self.survival = survival or RankAndCrowdingSurvival()
        self.eliminate_duplicates = eliminate_duplicates or EliminateDuplicates()

    def _offspring(self, problem: Problem, X, F, CV, rng) -> np.ndarray:
        rank, crowd = rank_and_crowding(F, CV)
        children = np.empty((0, problem.n_var), dtype=np.int64)
        for _ in range(20):                 # retry until enough new genomes (a converged population repeats)
            need = self.n_offsprings - len(children)
            n_pairs = (need + 1) // 2
            parents = self.selection(rank, crowd, 2 * n_pairs, rng).reshape(2, n_pairs)
            new = self.crossover(X[parents[0]], X[parents[1]], problem.xl, problem.xu, rng)
            new = self.mutation(new, problem.xl, problem.xu, rng)
            candidates = np.vstack([children, new])
            keep = self.eliminate_duplicates(candidates, X)
            children = candidates[keep][:self.n_offsprings]
            if len(children) >= self.n_offsprings:
                break
        return children

    def run(self, problem: Problem, n_gen: int, seed: int = 0,
            callback: Callable[[int, Result], None] | None = None) -> Result:
        if not isinstance(n_gen, int) or n_gen < 1:
            raise ValueError(f"n_gen must be an integer >= 1, got {n_gen!r}")
        rng = np.random.default_rng(seed)
        X = self.sampling(problem, self.pop_size, rng)
        X = X[self.eliminate_duplicates(X)]
        F, CV = problem.evaluate(X)
        evaluations = len(X)
        result = Result(X, F, CV, evaluations, 1)
        if callback:
            callback(1, result)
        for gen in range(2, n_gen + 1):
            children = self._offspring(problem, X, F, CV, rng)
            if len(children):
                Fc, CVc = problem.evaluate(children)
                evaluations += len(children)
                X, F, CV = np.vstack([X, children]), np.vstack([F, Fc]), np.concatenate([CV, CVc])
            keep = self.survival(F, CV, self.pop_size, rng)
            X, F, CV = X[keep], F[keep], CV[keep]
            result = Result(X, F, CV, evaluations, gen, result.history)
            if callback:
                callback(gen, result)
        return result
