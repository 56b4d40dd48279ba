"""A search run end to end and its run directory: run.json (settings to rebuild the model, runtime,
threads, how each runtime's whole programs are predicted, unmodelled operators), front.json (per candidate:
predicted latency under the run's runtime and under each runtime, per layer, accuracy, width and density per
layer, kernel per layer and, under runtime sparse, its layout on the engine),
programs.jsonl (each candidate's whole program spec), front.png with uniform references, budgets.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from jcw.profiler import programs
from jcw.profiler.cliargs import os_error_reason, short_path

from .errors import SearchError
from .genome import STEPS, Bounds, SearchSpace
from .graph import read_model
from .objectives import LATENCY_MEANING, RUNTIMES, SPARSE_NOTE, LatencyModel, PruningProblem
from .pymoo_parts import ALGORITHMS, Result, SpreadSampling, evolve, make_algorithm

REFERENCE_WIDTHS = (1.0, 0.75, 0.5)
REFERENCE_DENSITIES = (0.75, 0.5, 0.3)

#: Size limits of a search, checked before anything is allocated (README "Errors and limits"):
#: the example input (float32) the model is traced with, and the search's working set, dominated by pairwise
#: work on parents + offspring (2 x pop genomes): pymoo's duplicate elimination (float64 distances of offspring
#: to population) and sorting.
MAX_INPUT_BYTES = 256 * 1024 ** 2
MAX_SEARCH_BYTES = 2 * 1024 ** 3
#: Bytes per pair of the 2 x pop genomes (the distance matrix, pop x 2 pop float64, is 4 bytes per such pair;
#: the rest is headroom for the sorting and its masks),
#: and per layer of one genome in the predictor's feature columns (~64 float64 columns).
_SORT_BYTES_PER_PAIR = 5
_FEATURE_BYTES_PER_LAYER = 64 * 8


def _gb(n: float) -> str:
    if n < 1024 ** 3:
        return f"{n / 1024 ** 2:.3g} MB"
    gb = n / 1024 ** 3
    return f"{gb:,.0f} GB" if gb >= 1000 else f"{gb:.3g} GB"


def search_bytes(pop: int, n_layers: int = 0) -> int:
    """Estimated peak memory of a search with population `pop` over a model of `n_layers` layers."""
    n = 2 * int(pop)
    return _SORT_BYTES_PER_PAIR * n * n + n * int(n_layers) * _FEATURE_BYTES_PER_LAYER


def max_population(n_layers: int = 0) -> int:
    """The largest population whose estimated search fits MAX_SEARCH_BYTES."""
    low, high = 4, 1 << 20
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if search_bytes(middle, n_layers) <= MAX_SEARCH_BYTES else (low, middle - 1)
    return low


def check_population(pop: int, n_layers: int = 0) -> None:
    """SearchError (one sentence) when the population's estimated memory exceeds MAX_SEARCH_BYTES."""
    need = search_bytes(pop, n_layers)
    if need > MAX_SEARCH_BYTES:
        raise SearchError(f"--pop {pop} would need about {_gb(need)} of memory, more than the {_gb(MAX_SEARCH_BYTES)} "
                          f"a search may use; use --pop {max_population(n_layers)} or less (JCW uses 64)")


def check_input_shape(shape) -> None:
    """SearchError (one sentence) when a float32 example input of `shape` exceeds MAX_INPUT_BYTES."""
    need = 4 * int(np.prod([int(v) for v in shape], dtype=object))
    if need > MAX_INPUT_BYTES:
        raise SearchError(f"input shape {','.join(str(v) for v in shape)} needs {_gb(need)} for the example input "
                          f"alone, more than the {_gb(MAX_INPUT_BYTES)} jcw allows (activations take many times "
                          f"more); choose a smaller --input-shape, such as 1,3,224,224")


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a search: carries the last finished generation's result (None before the first), the
    latency model and the seconds spent, so the front so far can still be written."""

    def __init__(self, result: Result | None, latency: LatencyModel, seconds: float) -> None:
        super().__init__("interrupted")
        self.result, self.latency, self.seconds = result, latency, seconds


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
    prune_densities: bool = True   # only under runtime "sparse": ExecuTorch runs pruned weights dense
    runtime: str = "executorch"
    algorithm: str = "nsga2"       # a key of pymoo_parts.ALGORITHMS; nsga2 = NSGA-II with JCW's selection

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise SearchError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.algorithm not in ALGORITHMS:
            raise SearchError(f"--algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        for name in ("pop", "gens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (4 if name == "pop" else 1):
                raise SearchError(f"--{name} must be an integer >= {4 if name == 'pop' else 1}, got {value!r}")
        check_population(self.pop)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise SearchError(f"--seed must be an integer in [0, 2**32), got {self.seed!r}")
        if any(not (isinstance(b, (int, float)) and np.isfinite(b) and b > 0) for b in self.budgets):
            raise SearchError(f"every latency budget must be a positive number of ms, got {list(self.budgets)}")


def build_space(model: nn.Module, input_shape, settings: SearchSettings, name: str = "model") -> SearchSpace:
    """The genome of `model`: width genes, plus density genes only under runtime "sparse" (under
    executorch density buys no latency, so a width-only genome keeps weight pruning out of the front)."""
    check_input_shape(input_shape)  # before torch allocates it
    graph = read_model(model, torch.randn(*input_shape))
    check_population(settings.pop, len(graph.layers))
    return SearchSpace(graph, settings.width_choices, settings.density_choices, settings.bounds,
                       settings.prune_widths, settings.prune_densities and settings.runtime == "sparse", name)


def run_search(space: SearchSpace, predictor, accuracy: Callable, settings: SearchSettings,
               callback: Callable[[int, Result], None] | None = None) -> tuple[Result, LatencyModel, float]:
    """The settings' pymoo algorithm (NSGA-II with JCW's survival by default); returns the result, the latency
    model and the wall time in s.

    Ctrl-C raises SearchInterrupted with the last finished generation's result, so the caller can
    still write the front found so far.
    """
    latency = LatencyModel(predictor, space, settings.runtime)
    latency.check_program()   # before the search: an inexpressible operator is said at once
    problem = PruningProblem(space, latency, accuracy, settings.latency_range)
    # under the sparse engine half the density genes start dense: density 1.0 is the dense kernel there
    sampling = SpreadSampling(keep_share=0.5 if settings.runtime == "sparse" else 0.0)
    algorithm = make_algorithm(settings.algorithm, settings.pop, sampling)
    start = time.perf_counter()
    finished: list[Result] = []

    def track(gen: int, result: Result) -> None:
        finished[:] = [result]
        if callback:
            callback(gen, result)

    try:
        result = evolve(algorithm, problem, settings.gens, seed=settings.seed, callback=track)
    except KeyboardInterrupt:
        raise SearchInterrupted(finished[0] if finished else None, latency, time.perf_counter() - start) from None
    return result, latency, time.perf_counter() - start


def candidates(space: SearchSpace, latency: LatencyModel, accuracy: Callable, X: np.ndarray) -> list[dict]:
    """Front entries in the front.json format for genomes X (latency_ms under the run's runtime)."""
    X = np.atleast_2d(X)
    by = latency.by_runtime(X)
    acc = accuracy(X)
    unmodelled = [op["op"] for op in latency.unmodelled]
    known = [r for r in RUNTIMES if by.get(r) is not None]
    out = []
    for i, x in enumerate(X):
        layers = []
        for j, (spec, layer) in enumerate(zip(space.layer_specs(x), space.graph.layers)):
            layers.append({"name": layer.name, **spec.to_dict(), "impl": "sparse" if by["sparse_layers"][i, j]
                           else "dense", "predicted_ms": float(by["layers"][i, j])})
            if latency.runtime == "sparse":   # the engine's layout: sparse layers and NCHW depthwise ones read NCHW
                layers[-1]["layout"] = "nchw" if by["sparse_layers"][i, j] or by["nchw_layers"][i, j] else "nhwc"
        described = space.describe(x)
        program_id = programs.program_id(space.program_spec(x))
        entry = {"latency_ms": float(by[latency.runtime][i]), "runtime": latency.runtime,
                 "latency_ms_by_runtime": {r: float(by[r][i]) for r in known},
                 "accuracy": float(acc[i]), "layers": layers,
                 "widths": [described["widths"][layer.name] for layer in space.graph.layers],
                 "densities": [described["densities"][layer.name] for layer in space.graph.layers],
                 "genome": [int(v) for v in x], "program_id": program_id, "unmodelled_ops": unmodelled}
        if latency.runtime == "sparse":
            entry["note"] = SPARSE_NOTE
        out.append(entry)
    return out


def program_records(space: SearchSpace, front: list[dict]) -> list[dict]:
    """programs.jsonl lines: the whole program spec of every front candidate."""
    return [{"candidate": i, "program_id": c["program_id"], "spec": space.program_spec(np.array(c["genome"]))}
            for i, c in enumerate(front) if c.get("program_id")]


def run_meta(latency: LatencyModel, card: dict | None) -> dict:
    """What run.json records about the latency: runtime, threads, device, how each runtime's whole programs are
    predicted (and why the engine's latency is unknown, if it is), unmodelled ops."""
    card = card or {}
    meta = {"runtime": latency.runtime, "latency_meaning": LATENCY_MEANING[latency.runtime],
            "threads": card.get("threads"), "device_address": card.get("device_address"),
            "predictor_runtime": card.get("runtime"), "program_model": latency.program_note,
            "sparse_program_model": latency.sparse_program_note, "unmodelled_ops": latency.unmodelled}
    if not latency.engine_ok:
        meta["sparse_unavailable"] = latency.engine_error
    if latency.runtime == "sparse":
        meta["note"] = SPARSE_NOTE
    return meta


def references(space: SearchSpace, latency: LatencyModel, accuracy: Callable) -> list[dict]:
    """Uniform width multipliers (dense) and uniform densities (full width), clipped to the bounds."""
    rows = [("width", w, space.uniform(w, 1.0)) for w in REFERENCE_WIDTHS if space.n_width or w == 1.0]
    rows += [("density", d, space.uniform(1.0, d)) for d in REFERENCE_DENSITIES if space.n_density]
    entries = candidates(space, latency, accuracy, np.array([r[2] for r in rows]))
    return [{"kind": kind, "value": value, "latency_ms": e["latency_ms"],
             "latency_ms_by_runtime": e["latency_ms_by_runtime"], "accuracy": e["accuracy"]}
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
    runtime = front[0].get("runtime", "sparse") if front else ""
    ax.set_xlabel(f"predicted latency (ms, runtime {runtime})")
    ax.set_ylabel("accuracy estimate")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_run(out_dir: str | Path, meta: dict, front: list[dict], refs: list[dict], budgets,
              program_lines: list[dict] = ()) -> Path:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SearchError(f"cannot create run directory {out}: {exc.strerror or exc}") from None
    # front.json first: it is the result; the rest describes it
    (out / "front.json").write_text(json.dumps(front, indent=1))
    (out / "run.json").write_text(json.dumps({**meta, "references": refs}, indent=1))
    (out / "programs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in program_lines))
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
    data.setdefault("runtime", "sparse")   # runs from before runtimes were per-layer sums with density genes
    data.setdefault("algorithm", "nsga2")  # runs from before the flag: JCW's NSGA-II
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
    except OSError as exc:
        raise SearchError(f"cannot read search run {short_path(run_dir)}: {os_error_reason(exc)}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
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
