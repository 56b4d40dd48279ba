"""JCW's survival as a pymoo `Survival`: each generation samples latency targets across the population's current
latency range and keeps, near each target, the best local front, so a single run yields good candidates for
many deployment budgets instead of crowding where NSGA-II's front happens to be dense. Seeded by pymoo.
"""
from __future__ import annotations

import numpy as np
from pymoo.core.survival import Survival
from pymoo.operators.survival.rank_and_crowding.metrics import get_crowding_function
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting


class JCWSurvival(Survival):
    """Survival = global front (up to `elite_share` of the population, thinned by crowding) plus, for
    each of `n_targets` sampled latency targets, the best local fronts within its window; the rest by
    rank and crowding. Objective 0 is latency; the window around a target spans `window` x (range / n_targets).

    pymoo hands `_do` the feasible individuals only and fills any remaining places with the least
    infeasible ones. Survivors carry `rank` and `crowding` among themselves, which NSGA-II's binary
    tournament and its optimum read.
    """

    def __init__(self, n_targets: int = 16, window: float = 1.0, elite_share: float = 0.8) -> None:
        super().__init__(filter_infeasible=True)
        if isinstance(n_targets, bool) or not isinstance(n_targets, int) or n_targets < 1:
            raise ValueError(f"n_targets must be an integer >= 1, got {n_targets!r}")
        if not window > 0:
            raise ValueError(f"window must be > 0, got {window!r}")
        if not 0.0 <= elite_share <= 1.0:
            raise ValueError(f"elite_share must be in [0, 1], got {elite_share!r}")
        self.n_targets, self.window, self.elite_share = n_targets, window, elite_share
        self.nds = NonDominatedSorting()
        self.crowding = get_crowding_function("cd")

    def targets(self, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
        """One target per equal stratum of [low, high], jittered inside it, visited in random order."""
        strata = (np.arange(self.n_targets) + rng.random(self.n_targets)) / self.n_targets
        return rng.permutation(low + strata * (high - low))

    def _least_crowded_first(self, F: np.ndarray) -> np.ndarray:
        return np.argsort(-self.crowding.do(F, n_remove=0), kind="stable")

    def select(self, F: np.ndarray, n_survive: int, rng: np.random.Generator) -> np.ndarray:
        """Indices of the `n_survive` rows of F (all feasible) that survive, ascending."""
        F = np.asarray(F, dtype=np.float64)
        n = len(F)
        if n <= n_survive:
            return np.arange(n)
        chosen = np.zeros(n, dtype=bool)
        elite = self.nds.do(F, only_non_dominated_front=True)
        n_elite = min(len(elite), int(round(self.elite_share * n_survive)))
        chosen[elite[self._least_crowded_first(F[elite])[:n_elite]]] = True
        latency = F[:, 0]
        low, high = latency.min(), latency.max()
        if high > low:
            quota = int(np.ceil((n_survive - chosen.sum()) / self.n_targets))
            half = 0.5 * self.window * (high - low) / self.n_targets
            for target in self.targets(low, high, rng):
                pool = np.nonzero(~chosen & (np.abs(latency - target) <= half))[0]
                taken = 0
                for front in self.nds.do(F[pool]) if len(pool) else []:
                    members = pool[front]
                    members = members[np.argsort(np.abs(latency[members] - target), kind="stable")]
                    take = members[:min(quota - taken, n_survive - int(chosen.sum()))]
                    chosen[take] = True
                    taken += len(take)
                    if taken >= quota:
                        break
        rest = np.nonzero(~chosen)[0]
        for front in self.nds.do(F[rest]) if chosen.sum() < n_survive else []:
            members = rest[front]
            room = n_survive - int(chosen.sum())
            if len(members) > room:
                members = members[self._least_crowded_first(F[members])[:room]]
            chosen[members] = True
            if chosen.sum() >= n_survive:
                break
        return np.nonzero(chosen)[0][:n_survive]

    def _do(self, problem, pop, *args, n_survive=None, random_state=None, **kwargs):
        rng = random_state if random_state is not None else np.random.default_rng()
        F = pop.get("F").astype(np.float64, copy=False)
        survivors = pop[self.select(F, len(pop) if n_survive is None else n_survive, rng)]
        F = survivors.get("F").astype(np.float64, copy=False)
        for rank, front in enumerate(self.nds.do(F)):
            crowding = self.crowding.do(F[front], n_remove=0)
            for individual, distance in zip(survivors[front], crowding):
                individual.set("rank", rank)
                individual.set("crowding", distance)
        return survivors
