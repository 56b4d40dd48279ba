"""Sample-efficiency curves: held-out accuracy against the number of profiled layers (random vs adaptive),
and whole-program accuracy against the number of measured training programs.

Both are simulated on one large profile by revealing subsets of its training data, so every point is
measured on the same held-out layers or programs with the same runners.
"""
from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jcw.predictor import adaptive
from jcw.predictor.errors import PredictorError
from jcw.predictor.evaluation import latencies, layer_key, metrics, predict_rows
from jcw.predictor.models import LatencyPredictor

DEFAULT_BUDGETS = (100, 200, 400, 800, 1600)
DEFAULT_PROGRAM_BUDGETS = (10, 20, 40, 80, 120)
PROGRAM_REPEATS = 5
ADAPTIVE_STEPS = 4

Row = Mapping[str, Any]


def _by_layer(rows: Sequence[Row]) -> dict[tuple, list[Row]]:
    layers: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        layers[layer_key(row)].append(row)
    return layers


def _flatten(layers: dict[tuple, list[Row]], keys: Sequence[tuple]) -> list[Row]:
    return [row for key in keys for row in layers[key]]


def adaptive_subset(layers: dict[tuple, list[Row]], budget: int, seed: int,
                    chooser: Callable = adaptive.choose) -> list[tuple]:
    """Half the budget at random, the rest in ADAPTIVE_STEPS steps chosen by `chooser` among the
    not-yet-revealed configurations of the pool (as `jcw profile --adaptive` does among fresh ones)."""
    keys = sorted(layers, key=repr)
    rng = random.Random(seed)
    rng.shuffle(keys)
    chosen = keys[:budget - budget // 2]
    configs_per_layer = sum(len(layers[k]) for k in chosen) / max(1, len(chosen))
    target_layers = budget // 2
    step = max(1, -(-target_layers // ADAPTIVE_STEPS))
    while len(chosen) < budget:
        taken = set(chosen)
        pool = [row for key in keys if key not in taken for row in layers[key]]
        if not pool:
            break
        n_configs = max(1, int(round(min(step, budget - len(chosen)) * configs_per_layer)))
        picked = chooser(pool, _flatten(layers, chosen), n_configs, seed + len(chosen))
        # A chosen configuration reveals its whole layer (the other kernel is measured alongside).
        new = list(dict.fromkeys(layer_key(pool[i]) for i in picked))[:budget - len(chosen)]
        if not new:
            break
        chosen.extend(new)
    return chosen


def sample_efficiency(training: Sequence[Row], holdout: Sequence[Row], budgets: Sequence[int] = DEFAULT_BUDGETS,
                      *, seed: int = 0, model: str = "auto", with_adaptive: bool = True, repeats: int = 1,
                      progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One entry per (budget, arm) that the pool can support: metrics on the held-out rows.

    Each point averages `repeats` independent draws (seeds seed, seed+1, ...), since one draw of a
    few hundred layers can land a point or two either side of a target; `within10_min` is the worst
    draw. The adaptive arm needs unrevealed layers to choose from, so it runs only while the budget
    is at most half the pool.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise PredictorError(f"parameter 'repeats' must be a whole number >= 1, got {repeats!r}")
    layers = _by_layer(training)
    keys = sorted(layers, key=repr)
    truth = latencies(holdout)
    out = []
    for budget in budgets:
        if budget > len(keys):
            continue
        # The whole pool is one draw however often it is drawn.
        draws = repeats if budget < len(keys) else 1
        arms = {"random": lambda s, b=budget: random.Random(s).sample(keys, b)}
        if with_adaptive and budget * 2 <= len(keys):
            arms["adaptive"] = lambda s, b=budget: adaptive_subset(layers, b, s)
        for arm, draw in arms.items():
            if progress:
                progress(f"sample efficiency: {arm} {budget} layers" + (f" x {draws} draws" if draws > 1 else ""))
            points = []
            for offset in range(draws):
                rows = _flatten(layers, draw(seed + offset))
                fitted = LatencyPredictor(model, random_state=seed).fit(rows)
                points.append({"configurations": len(rows), "model": fitted.kind_,
                               **metrics(predict_rows(fitted, holdout), truth)})
            out.append({"budget": budget, "arm": arm, "draws": draws,
                        "configurations": int(round(sum(p["configurations"] for p in points) / draws)),
                        "model": "/".join(sorted({p["model"] for p in points})),
                        **{k: sum(p[k] for p in points) / draws
                           for k in ("rmspe", "mape", "within5", "within10", "within15")},
                        "within10_min": min(p["within10"] for p in points)})
    return out


def first_budget_reaching(curve: Sequence[Mapping[str, Any]], share: float = 0.95, arm: str = "random"
                          ) -> int | None:
    """Smallest budget whose held-out share within ±10 % reaches `share` in every draw (None if none does).

    Every draw, not the mean: a default budget should reach the target whichever layers it happens
    to draw, not on average.
    """
    hits = [p["budget"] for p in curve if p["arm"] == arm and p.get("within10_min", p["within10"]) >= share]
    return min(hits) if hits else None


def as_table(curve: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    return [[str(p["budget"]), p["arm"], str(p["configurations"]), p["model"], f"{100 * p['within10']:.1f}",
             f"{100 * p['rmspe']:.1f}"] for p in curve]


def program_efficiency(data: Mapping[str, Any], budgets: Sequence[int] = DEFAULT_PROGRAM_BUDGETS, *,
                       repeats: int = PROGRAM_REPEATS, seed: int = 0, kind: str = "auto",
                       progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Whole-program accuracy of program models fitted on `budget` random training programs, `repeats` draws
    each (the layer predictor stays the one fitted on all layers): per budget, the mean and the worst draw's
    share within ±10 % on the "holdout" and "unseen" programs, their median |error|, and the kinds chosen.

    `data` is predictor.program_eval.program_data() of the profile's program rows.
    """
    from jcw.predictor.programs import ProgramModel, errors  # deferred: the layer curve does not need it

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise PredictorError(f"parameter 'repeats' must be a whole number >= 1, got {repeats!r}")
    sample = data["sample"]
    train = [i for i in range(len(sample)) if sample[i] == "train"]
    sets = {name: sample == name for name in ("holdout", "unseen") if (sample == name).any()}
    out = []
    # The whole training set is the last point (one draw however often it is drawn).
    for budget in sorted({b for b in budgets if 4 <= b < len(train)} | {len(train)} if len(train) >= 4 else ()):
        draws = repeats if budget < len(train) else 1
        if progress:
            progress(f"program sample efficiency: {budget} programs" + (f" x {draws} draws" if draws > 1 else ""))
        scores: dict[str, list[dict[str, float]]] = {name: [] for name in sets}
        kinds = []
        for offset in range(draws):
            chosen = random.Random(seed + offset).sample(train, budget)
            model = ProgramModel(kind, random_state=seed).fit(data["x"][chosen], data["measured_ms"][chosen],
                                                              [data["family"][i] for i in chosen])
            kinds.append(model.kind_)
            for name, mask in sets.items():
                scores[name].append(errors(model.predict(data["x"][mask]), data["measured_ms"][mask]))
        point: dict[str, Any] = {"budget": budget, "draws": draws, "kinds": "/".join(sorted(set(kinds)))}
        for name, values in scores.items():
            point[name] = {"n": values[0]["n"], "within10": sum(v["within10"] for v in values) / draws,
                           "within10_min": min(v["within10"] for v in values),
                           "median": sum(v["median"] for v in values) / draws}
        out.append(point)
    return out


def program_table(curve: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Rows: programs, draws, kinds, then per set mean ±10 %, worst draw ±10 %, mean median |err| (in %)."""
    rows = []
    for p in curve:
        row = [str(p["budget"]), str(p["draws"]), p["kinds"]]
        for name in ("holdout", "unseen"):
            m = p.get(name)
            row += ["-"] * 3 if m is None else [f"{100 * m['within10']:.1f}", f"{100 * m['within10_min']:.1f}",
                                                  f"{100 * m['median']:.1f}"]
        rows.append(row)
    return rows


PROGRAM_HEADER = ["programs", "draws", "model", "holdout ±10% (%)", "holdout worst draw", "holdout median |err| (%)",
                  "unseen ±10% (%)", "unseen worst draw", "unseen median |err| (%)"]
