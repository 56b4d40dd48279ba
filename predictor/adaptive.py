"""The acquisition plug-in `jcw profile --adaptive` calls (entry-point group `jcw.acquisition`, name `default`).

Chooses the candidate configurations where a committee of predictors fitted to bootstrap resamples
disagrees most, spread over distinct shapes so one step does not spend its budget on one region.
The committee mixes the hybrid (physical model × trees) with pure trees: the two agree where data
is dense and part ways where a candidate lies outside the measured space.
"""
from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jcw.predictor.evaluation import predict_rows, shape_key
from jcw.predictor.models import LatencyPredictor

ENSEMBLE_SIZE = 5
#: Below this many measured rows a model is no better than chance: choose at random.
MIN_MEASURED = 24
#: Trees per ensemble member: acquisition must take seconds, not minutes.
ENSEMBLE_TREES = 60


def disagreement(candidates: Sequence[Mapping[str, Any]], measured: Sequence[Mapping[str, Any]], seed: int,
                 members: int = ENSEMBLE_SIZE) -> np.ndarray:
    """Standard deviation of log-latency over a committee fitted to bootstrap resamples of `measured`."""
    rng = np.random.default_rng(seed)
    logs = []
    for member in range(members):
        sample = [measured[i] for i in rng.integers(0, len(measured), len(measured))]
        kind = "hybrid" if member % 2 == 0 else "gbm"
        model = LatencyPredictor(kind, n_estimators=ENSEMBLE_TREES, random_state=member).fit(sample)
        logs.append(np.log(predict_rows(model, candidates)))
    return np.std(np.array(logs), axis=0)


def choose(candidates: list[dict[str, Any]], measured: list[dict[str, Any]], n: int, seed: int) -> list[int]:
    """Up to `n` indices into `candidates`: highest ensemble disagreement first, one per shape per pass."""
    n = min(int(n), len(candidates))
    if n <= 0:
        return []
    usable = [m for m in measured if m.get("latency_us") and m["latency_us"] > 0]
    if len(usable) < MIN_MEASURED:
        return random.Random(seed).sample(range(len(candidates)), n)
    spread = disagreement(candidates, usable, seed)
    order = np.argsort(-spread, kind="stable")
    picked: list[int] = []
    shapes_taken: set[tuple] = set()
    # First pass: the most uncertain candidate of each shape; later passes fill up if needed.
    while len(picked) < n:
        added = False
        for index in order:
            index = int(index)
            if index in picked:
                continue
            key = shape_key(candidates[index])
            if key in shapes_taken:
                continue
            picked.append(index)
            shapes_taken.add(key)
            added = True
            if len(picked) == n:
                break
        if not added:
            break
        shapes_taken.clear()
    return picked
