"""JCW's survival: each generation samples latency targets across the population's current latency
range and keeps, near each target, the best local front, so a single run yields good candidates for
many deployment budgets instead of crowding where NSGA-II's front happens to be dense. Seeded.
"""
from __future__ import annotations

import numpy as np

from .nsga2 import constrained_fronts, crowding_distance, non_dominated_sort


class JCWSurvival:
    """Survival = global front (up to `elite_share` of the population, thinned by crowding) plus, for
    each of `n_targets` sampled latency targets, the best local fronts within its window.

    Objective 0 is latency; the window around a target spans `window` x (range / n_targets).
    """

    def __init__(self, n_targets: int = 16, window: float = 1.0, elite_share: float = 0.8) -> None:
        if not isinstance(n_targets, int) or n_targets < 1:
            raise ValueError(f"n_targets must be an integer >= 1, got {n_targets!r}")
        if not window > 0:
            raise ValueError(f"window must be > 0, got {window!r}")
        if not 0.0 <= elite_share <= 1.0:
            raise ValueError(f"elite_share must be in [0, 1], got {elite_share!r}")
        self.n_targets, self.window, self.elite_share = n_targets, window, elite_share

    def targets(self, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
        """One target per equal stratum of [low, high], jittered inside it, visited in random order."""
        strata = (np.arange(self.n_targets) + rng.random(self.n_targets)) / self.n_targets
        return rng.permutation(low + strata * (high - low))

    def __call__(self, F: np.ndarray, CV: np.ndarray, n_survive: int, rng: np.random.Generator) -> np.ndarray:
        n = len(F)
        if n <= n_survive:
            return np.arange(n)
        chosen = np.zeros(n, dtype=bool)
        feasible = np.nonzero(CV <= 0)[0]
        if len(feasible):
            elite = feasible[non_dominated_sort(F[feasible])[0]]
            n_elite = min(len(elite), int(round(self.elite_share * n_survive)))
            crowd = crowding_distance(F[elite])
            chosen[elite[np.argsort(-crowd, kind="stable")[:n_elite]]] = True
            latency = F[:, 0]
            low, high = latency[feasible].min(), latency[feasible].max()
            if high > low:
                quota = int(np.ceil((n_survive - chosen.sum()) / self.n_targets))
                half = 0.5 * self.window * (high - low) / self.n_targets
                for target in self.targets(low, high, rng):
                    pool = feasible[~chosen[feasible] & (np.abs(latency[feasible] - target) <= half)]
                    taken = 0
                    for front in non_dominated_sort(F[pool]) if len(pool) else []:
                        members = pool[front]
                        members = members[np.argsort(np.abs(latency[members] - target), kind="stable")]
                        take = members[:min(quota - taken, n_survive - int(chosen.sum()))]
                        chosen[take] = True
                        taken += len(take)
                        if taken >= quota:
                            break
        if chosen.sum() < n_survive:
            rest = np.nonzero(~chosen)[0]
            for front in constrained_fronts(F[rest], CV[rest]):
                members = rest[front]
                room = n_survive - int(chosen.sum())
                if len(members) > room:
                    members = members[np.argsort(-crowding_distance(F[members]), kind="stable")[:room]]
                chosen[members] = True
                if chosen.sum() >= n_survive:
                    break
        return np.nonzero(chosen)[0][:n_survive]
