"""A search run end to end and its run directory: run.json (settings, to rebuild the model),
front.json (per candidate: predicted latency per layer and in total, accuracy, width and density per
layer, which kernel each layer would use), front.png with uniform references, and the budget table.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .errors import SearchError
from .genome import Bounds, SearchSpace, STEPS
from .graph import read_model
from .jcw_selection import JCWSurvival
from .nsga2 import NSGA2, Result
from .objectives import LatencyModel, PruningProblem

REFERENCE_WIDTHS = (1.0, 0.75, 0.5)
REFERENCE_DENSITIES = (0.75, 0.5, 0.3)


@dataclass
class SearchSettings:
    pop: int = 64
    gens: int = 128
    seed: int = 0
    budgets: tuple[float, ...] = ()
    latency_range: tuple[float, float] | None = None
    width_choices: tuple[float, ...] = STEPS
    density_choices: tuple[float, ...] = STEPS
    bounds: Bounds = field(default_factory=Bounds)
    prune_widths: bool = True
    prune_densities: bool = True

    def __post_init__(self) -> None:
        for name in ("pop", "gens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (4 if name == "pop" else 1):
                raise SearchError(f"--{name} must be an integer >= {4 if name == 'pop' else 1}, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise SearchError(f"--seed must be an integer in [0, 2**32), got {self.seed!r}")
        if any(not (isinstance(b, (int, float)) and np.isfinite(b) and b > 0) for b in self.budgets):
            raise SearchError(f"every latency budget must be a positive number of ms, got {list(self.budgets)}")


def build_space(model: nn.Module, input_shape, settings: SearchSettings) -> SearchSpace:
    graph = read_model(model, torch.randn(*input_shape))
    return SearchSpace(graph, settings.width_choices, settings.density_choices, settings.bounds,
                       settings.prune_widths, settings.prune_densities)


def run_search(space: SearchSpace, predictor, accuracy: Callable, settings: SearchSettings,
               callback: Callable[[int, Result], None] | None = None) -> tuple[Result, LatencyModel, float]:
    """NSGA-II with JCW's survival; returns the result, the latency model and the wall time in s."""
    latency = LatencyModel(predictor, space)
    problem = PruningProblem(space, latency, accuracy, settings.latency_range)
    algorithm = NSGA2(settings.pop, survival=JCWSurvival())
    start = time.perf_counter()
    result = algorithm.run(problem, settings.gens, seed=settings.seed, callback=callback)
    return result, latency, time.perf_counter() - start


def candidates(space: SearchSpace, latency: LatencyModel, accuracy: Callable, X: np.ndarray) -> list[dict]:
    """Front entries in the front.json format for genomes X."""
    X = np.atleast_2d(X)
    per_layer, sparse = latency.per_layer(X)
    acc = accuracy(X)
    out = []
    for i, x in enumerate(X):
        layers = []
        for j, (spec, layer) in enumerate(zip(space.layer_specs(x), space.graph.layers)):
            layers.append({"name": layer.name, **spec.to_dict(), "impl": "sparse" if sparse[i, j] else "dense",
                           "predicted_ms": float(per_layer[i, j])})
        described = space.describe(x)
        out.append({"latency_ms": float(per_layer[i].sum()), "accuracy": float(acc[i]), "layers": layers,
                    "widths": [described["widths"][layer.name] for layer in space.graph.layers],
                    "densities": [described["densities"][layer.name] for layer in space.graph.layers],
                    "genome": [int(v) for v in x]})
    return out


def references(space: SearchSpace, latency: LatencyModel, accuracy: Callable) -> list[dict]:
    """Uniform width multipliers (dense) and uniform densities (full width), clipped to the bounds."""
    rows = [("width", w, space.uniform(w, 1.0)) for w in REFERENCE_WIDTHS if space.n_width or w == 1.0]
    rows += [("density", d, space.uniform(1.0, d)) for d in REFERENCE_DENSITIES if space.n_density]
    entries = candidates(space, latency, accuracy, np.array([r[2] for r in rows]))
    return [{"kind": kind, "value": value, "latency_ms": e["latency_ms"], "accuracy": e["accuracy"]}
            for (kind, value, _), e in zip(rows, entries)]


def best_per_budget(front: list[dict], budgets) -> list[dict | None]:
    """For each budget, the most accurate candidate whose predicted latency fits (None if none fits)."""
    out = []
    for budget in budgets:
        fitting = [c for c in front if c["latency_ms"] <= budget]
        out.append(max(fitting, key=lambda c: (c["accuracy"], -c["latency_ms"])) if fitting else None)
    return out


def plot_front(path: Path, front: list[dict], refs: list[dict], budgets, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot([c["latency_ms"] for c in front], [c["accuracy"] for c in front], "o-", ms=3, label="JCW search front")
    for kind, marker in (("width", "s"), ("density", "^")):
        pts = [r for r in refs if r["kind"] == kind]
        if pts:
            ax.scatter([r["latency_ms"] for r in pts], [r["accuracy"] for r in pts], marker=marker, s=40,
                       label=f"uniform {kind}", zorder=3)
            for r in pts:
                label = f"{r['value']:g}x" if kind == "width" else f"d={r['value']:g}"
                ax.annotate(label, (r["latency_ms"], r["accuracy"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    slowest = max([c["latency_ms"] for c in front] + [r["latency_ms"] for r in refs])
    for budget in budgets:
        if budget <= 1.5 * slowest:          # a far-away budget would squash the front into a corner
            ax.axvline(budget, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("accuracy estimate")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_run(out_dir: str | Path, meta: dict, front: list[dict], refs: list[dict], budgets) -> Path:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SearchError(f"cannot create run directory {out}: {exc.strerror or exc}") from None
    (out / "run.json").write_text(json.dumps({**meta, "references": refs}, indent=1))
    (out / "front.json").write_text(json.dumps(front, indent=1))
    table = best_per_budget(front, budgets)
    (out / "budgets.json").write_text(json.dumps(
        [{"budget_ms": b, "candidate": None if c is None else front.index(c),
          "latency_ms": None if c is None else c["latency_ms"], "accuracy": None if c is None else c["accuracy"]}
         for b, c in zip(budgets, table)], indent=1))
    plot_front(out / "front.png", front, refs, budgets, f"{meta.get('model')} on {meta.get('predictor')}")
    return out


def settings_to_json(settings: SearchSettings) -> dict:
    data = asdict(settings)
    data["bounds"] = asdict(settings.bounds)
    return data


def settings_from_json(data: dict) -> SearchSettings:
    data = dict(data)
    data["bounds"] = Bounds(**data["bounds"])
    for key in ("budgets", "width_choices", "density_choices"):
        data[key] = tuple(data[key])
    if data.get("latency_range") is not None:
        data["latency_range"] = tuple(data["latency_range"])
    return SearchSettings(**data)


def load_run(run_dir: str | Path) -> tuple[dict, list[dict]]:
    run_dir = Path(run_dir)
    try:
        meta = json.loads((run_dir / "run.json").read_text())
        front = json.loads((run_dir / "front.json").read_text())
    except (FileNotFoundError, NotADirectoryError):
        raise SearchError(f"{run_dir} is not a search run directory (run.json or front.json missing)") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SearchError(f"cannot read search run {run_dir}: {exc}") from None
    if not isinstance(meta, dict):
        raise SearchError(f"search run {run_dir} has a run.json that is not a JSON object")
    if not isinstance(front, list) or not front:
        raise SearchError(f"search run {run_dir} has an empty front")
    for i, cand in enumerate(front):
        if not (isinstance(cand, dict) and isinstance(cand.get("genome"), list) and isinstance(cand.get("layers"), list)
                and all(isinstance(cand.get(k), (int, float)) and not isinstance(cand.get(k), bool)
                        for k in ("latency_ms", "accuracy"))):
            raise SearchError(f"search run {run_dir} has a malformed candidate {i} in front.json (it needs numbers "
                              f"latency_ms and accuracy, a genome and layers)")
    return meta, front
