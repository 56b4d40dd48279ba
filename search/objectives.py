"""Objectives of the search, vectorized over a population: predicted latency under a runtime (executorch:
the whole deployed .pte, layers dense; sparse: the whole network on the kit's sparse engine; a couple of
predictor calls per population) and pluggable accuracy estimators —
a data-free weight-magnitude proxy, a real evaluator on held-out data, or a user `module:function`.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from jcw.predictor import sparse_runtime

from .errors import SearchError
from .genome import SearchSpace
from .prune import apply_genome, channel_order, recalibrate_batchnorm
from .zoo import load_callable, user_failure

#: Runtimes a search can optimise for (ARCHITECTURE.md, "Runtimes").
RUNTIMES = ("executorch", "sparse")
#: What latency_ms means under each runtime (run.json records it).
LATENCY_MEANING = {
    "executorch": "whole ExecuTorch program (.pte, XNNPACK delegate) with every layer dense: the predictor's "
                  "program model over the conv layers' dense latency and every other operator",
    "sparse": "whole network on the kit's sparse engine (the .jcwnet): every groups-1 convolution with density < 1 "
              "through the sparse kernel, the other layers dense (depthwise ones between sparse layers NCHW), its "
              "layout conversions and every other operator: the predictor's sparse program model over the engine's "
              "parts",
}
#: The loud note of --runtime sparse: which of the files `jcw export` writes the latency is for.
SPARSE_NOTE = ("--runtime sparse optimises for the kit's sparse network engine: latency_ms is the engine's predicted "
               "whole-network latency of the .jcwnet `jcw export` writes (run it with `jcw measure --net`), while the "
               ".pte from the same export runs every layer dense on ExecuTorch, whose predicted latency is "
               "latency_ms_by_runtime.executorch")
NO_PROGRAM_MODEL = "sum of dense layers (this predictor has no whole-program model)"
NO_SPARSE_PROGRAM_MODEL = "sum of layers as the engine runs them (this predictor has no sparse program model)"


class LatencyModel:
    """Predicted latency of genomes under one runtime; counts predictor calls and layer rows (the cost).

    executorch (the default): the deployed .pte, where pruned weights run dense — densities are ignored
    (set to 1) and the whole program is predicted from the conv layers' dense latency plus every other
    operator of the program template, one layer call and one program call per population.
    sparse: the sparse engine running the whole network — each groups-1 convolution whose density is below 1
    runs sparse (search.engine_program), priced by the predictor's sparse program model over the engine's parts
    (dense, NCHW-depthwise and sparse layer ms, layout conversions, other operators), one layer call and one
    program call per population; a predictor without that model sums the layers as the engine runs them.
    """

    def __init__(self, predictor, space: SearchSpace, runtime: str = "executorch") -> None:
        if runtime not in RUNTIMES:
            raise SearchError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        if not hasattr(predictor, "predict"):
            raise SearchError("the latency predictor must have a predict(layers) method")
        self.predictor, self.space, self.runtime = predictor, space, runtime
        self.calls = self.rows = 0
        self.whole_program = hasattr(predictor, "predict_program_parts")
        self.program_note = getattr(predictor, "program_note", None) if self.whole_program else NO_PROGRAM_MODEL
        self.engine_program = hasattr(predictor, "predict_sparse_program_parts")
        self.sparse_program_note = getattr(predictor, "sparse_program_note", None) if self.engine_program \
            else NO_SPARSE_PROGRAM_MODEL
        self._is_conv = np.array([not layer.is_linear for layer in space.graph.layers])
        self.engine_error: str | None = None
        self._checked_program = False

    def check_program(self) -> None:
        """Build the program template and the sparse engine's view of it now. An operator no program spec
        expresses is a SearchError; one the engine cannot run is a SearchError under sparse, and under
        executorch only leaves the engine's latency unknown (engine_error)."""
        if self._checked_program:
            return
        template = self.space.program
        try:
            template.engine  # noqa: B018
        except SearchError as exc:
            if self.runtime == "sparse":
                raise SearchError(f"{exc}, so --runtime sparse cannot search this model; search it with "
                                  f"--runtime executorch") from None
            self.engine_error = str(exc)
        self._checked_program = True

    @property
    def engine_ok(self) -> bool:
        self.check_program()
        return self.engine_error is None

    @property
    def unmodelled(self) -> list[dict[str, str]]:
        """Operators of the program the whole-program prediction does not know (they are not free)."""
        return list(self.space.program.unmodelled)

    def _checked(self, values, what: str) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(values)) or (values <= 0).any():
            raise SearchError(f"the predictor returned a non-positive or non-finite {what} latency")
        return values

    def dense_layers(self, X) -> np.ndarray:
        """(n, n_layers) dense-kernel ms of every layer, densities ignored (as ExecuTorch runs them)."""
        X = np.atleast_2d(X)
        cols = self.space.columns(X)
        cols["density"] = np.ones(len(cols["density"]))
        if hasattr(self.predictor, "predict_dense"):
            dense = self.predictor.predict_dense(cols)
        else:
            dense = self.predictor.predict(cols)["dense_ms"]
        self.calls += 1
        self.rows += X.shape[0] * self.space.n_layers
        return self._checked(dense, "layer").reshape(X.shape[0], self.space.n_layers)

    def program(self, X, dense: np.ndarray | None = None) -> np.ndarray:
        """(n,) whole-program ms of the deployed .pte (executorch runtime)."""
        X = np.atleast_2d(X)
        dense = self.dense_layers(X) if dense is None else dense
        if not self.whole_program:
            return dense.sum(axis=1)
        template, n = self.space.program, X.shape[0]
        ops = template.op_arrays(self.space.channels(X))
        total = self.predictor.predict_program_parts(dense[:, self._is_conv].sum(axis=1), ops,
                                                     np.full(n, template.n_nodes), np.full(n, template.n_conv))
        self.calls += 1
        return self._checked(total, "program")

    def engine(self, X) -> dict[str, np.ndarray]:
        """The sparse engine running genomes X: "latency" (n,) whole-network ms, "layers" (n, n_layers) ms of each
        layer as the engine runs it, "sparse_layers" and "nchw_layers" (n, n_layers) bool: the layers it runs
        sparse and the depthwise ones it runs NCHW. SearchError when the engine cannot run the model."""
        X = np.atleast_2d(X)
        if not self.engine_ok:
            raise SearchError(self.engine_error)
        template, n, shape = self.space.program, X.shape[0], (X.shape[0], self.space.n_layers)
        channels = self.space.channels(X)
        plan = template.engine.plan(channels, self.space.densities(X),
                                    bool(getattr(self.predictor, "xnnpack_sparse_inference", False)))
        predicted = self.predictor.predict(self.space.columns(X))
        self.calls += 1
        self.rows += n * self.space.n_layers
        dense = self._checked(predicted["dense_ms"], "layer").reshape(shape)
        sparse = np.asarray(predicted["sparse_ms"], dtype=np.float64).reshape(shape)  # NaN: no sparse kernel
        runs = plan["runs_sparse"]
        layers = self._checked(np.where(runs, sparse, dense), "layer")
        if self.engine_program:
            parts = sparse_runtime.engine_parts(dense, sparse, runs, plan["nchw_depthwise"], self._is_conv,
                                                plan["layout"])
            total = self.predictor.predict_sparse_program_parts(parts, template.op_arrays(channels),
                                                                np.full(n, template.n_nodes),
                                                                np.full(n, template.n_conv))
            self.calls += 1
        else:
            total = layers.sum(axis=1)
        return {"latency": self._checked(total, "whole-network"), "layers": layers, "sparse_layers": runs,
                "nchw_layers": plan["nchw_depthwise"]}

    def per_layer(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Per-layer ms under this runtime and which layers run sparse (never under executorch)."""
        if self.runtime == "executorch":
            dense = self.dense_layers(X)
            return dense, np.zeros(dense.shape, dtype=bool)
        engine = self.engine(X)
        return engine["layers"], engine["sparse_layers"]

    def by_runtime(self, X) -> dict[str, np.ndarray | None]:
        """Latency of genomes under every runtime (None: the engine cannot run the model), plus this run's
        runtime's per-layer ms ("layers") and which layers run sparse ("sparse_layers") or NCHW ("nchw_layers")."""
        dense = self.dense_layers(X)
        engine = self.engine(X) if self.engine_ok else None
        out = {"executorch": self.program(X, dense), "sparse": None if engine is None else engine["latency"]}
        if self.runtime == "sparse":
            out.update(layers=engine["layers"], sparse_layers=engine["sparse_layers"],
                       nchw_layers=engine["nchw_layers"])
        else:
            out.update(layers=dense, sparse_layers=np.zeros(dense.shape, dtype=bool),
                       nchw_layers=np.zeros(dense.shape, dtype=bool))
        return out

    def __call__(self, X) -> np.ndarray:
        if self.runtime == "executorch":
            return self.program(X)
        return self.engine(X)["latency"]


class ProxyAccuracy:
    """Data-free accuracy proxy in (0, 1]: product over layers of the retained weight magnitude
    (kept channels x kept weights) raised to a per-layer sensitivity; 1.0 for the unpruned model.

    Sensitivity defaults to 1/sqrt(weights), normalised to sum to 1: small layers (the first, the
    classifier, depthwise) lose more per pruned weight, which matches common pruning experience.
    """

    name = "proxy"

    def __init__(self, model: nn.Module, space: SearchSpace, sensitivity: np.ndarray | None = None) -> None:
        self.space = space
        orders = channel_order(model, space)
        wc, dc = space.width_choices, space.density_choices
        groups = space.graph.groups
        n_w, n_d = len(wc) + 1, len(dc) + 1      # last slot: unpruned (fixed group / no density gene)
        self.chan_table = np.ones((space.n_layers, n_w, n_w))
        self.weight_table = np.ones((space.n_layers, n_d))
        counts = []
        for li, layer in enumerate(space.graph.layers):
            w = model.get_submodule(layer.name).weight.detach().abs().double()
            counts.append(w.numel())
            g_in, g_out = groups[layer.in_group], groups[layer.out_group]
            kept_in = self._kept(wc, g_in.channels)
            kept_out = self._kept(wc, g_out.channels)
            if layer.depthwise:
                mass = w.reshape(g_out.channels, -1).sum(1).numpy()[orders[g_out.index]]
                cum = np.concatenate([[0.0], np.cumsum(mass)])
                frac = cum[kept_out] / cum[-1]
                self.chan_table[li] = frac[None, :]
            else:
                pair = w.reshape(w.shape[0], w.shape[1], -1).sum(2).numpy()
                pair = pair[orders[g_out.index]][:, orders[g_in.index]]
                cum = np.zeros((pair.shape[0] + 1, pair.shape[1] + 1))
                cum[1:, 1:] = pair.cumsum(0).cumsum(1)
                self.chan_table[li] = cum[np.ix_(kept_out, kept_in)].T / cum[-1, -1]
            sorted_mass = np.sort(w.flatten().numpy())[::-1]
            cum_w = np.concatenate([[0.0], np.cumsum(sorted_mass)])
            keep = np.maximum(1, np.floor(dc * w.numel() + 0.5).astype(np.int64))
            self.weight_table[li, :-1] = cum_w[keep] / cum_w[-1]
        counts = np.array(counts, dtype=np.float64)
        if sensitivity is None:
            sensitivity = 1.0 / np.sqrt(counts)
        sensitivity = np.asarray(sensitivity, dtype=np.float64)
        if sensitivity.shape != (space.n_layers,) or (sensitivity < 0).any():
            raise SearchError(f"sensitivity must hold {space.n_layers} non-negative numbers")
        self.sensitivity = sensitivity / sensitivity.sum()
        self.chan_table = np.log(np.maximum(self.chan_table, 1e-12))
        self.weight_table = np.log(np.maximum(self.weight_table, 1e-12))

    @staticmethod
    def _kept(choices: np.ndarray, channels: int) -> np.ndarray:
        kept = np.maximum(1, np.floor(choices * channels + 0.5).astype(np.int64))
        return np.concatenate([kept, [channels]])

    def __call__(self, X) -> np.ndarray:
        X = np.atleast_2d(X)
        space, n = self.space, X.shape[0]
        width_idx = np.full((n, len(space.graph.groups)), len(space.width_choices), dtype=np.int64)
        if space.n_width:
            width_idx[:, space.width_groups] = X[:, :space.n_width]
        dens_idx = np.full((n, space.n_layers), len(space.density_choices), dtype=np.int64)
        if space.n_density:
            dens_idx[:, space.density_layers] = X[:, space.n_width:]
        layers = np.arange(space.n_layers)
        log_keep = self.chan_table[layers, width_idx[:, space.in_group], width_idx[:, space.out_group]] \
            + self.weight_table[layers, dens_idx]
        return np.exp(log_keep @ self.sensitivity)


class EvaluatorAccuracy:
    """Real accuracy of each genome: prune, recalibrate batch norm, optionally fine-tune, then score
    on held-out data. Results are cached per genome, so survivors are never evaluated twice."""

    name = "evaluator"

    def __init__(self, model: nn.Module, space: SearchSpace, calibration: torch.Tensor,
                 eval_inputs: torch.Tensor, eval_targets: torch.Tensor, finetune_steps: int = 0,
                 train_inputs: torch.Tensor | None = None, train_targets: torch.Tensor | None = None,
                 lr: float = 1e-2, batch_size: int = 128, seed: int = 0) -> None:
        if finetune_steps < 0:
            raise SearchError(f"finetune_steps must be >= 0, got {finetune_steps}")
        if finetune_steps and (train_inputs is None or train_targets is None):
            raise SearchError("fine-tuning needs train_inputs and train_targets")
        self.model, self.space = model.eval(), space
        self.calibration, self.eval_inputs, self.eval_targets = calibration, eval_inputs, eval_targets
        self.finetune_steps, self.train_inputs, self.train_targets = finetune_steps, train_inputs, train_targets
        self.lr, self.batch_size, self.seed = lr, batch_size, seed
        self.orders = channel_order(model, space)
        self.cache: dict[bytes, float] = {}

    def pruned_model(self, x) -> nn.Module:
        pruned = apply_genome(self.model, self.space, x, self.orders)
        recalibrate_batchnorm(pruned, self.calibration.split(self.batch_size))
        if self.finetune_steps:
            self._finetune(pruned)
        return pruned.eval()

    def _finetune(self, model: nn.Module) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=0.9)
        model.train()
        for _ in range(self.finetune_steps):
            idx = torch.randint(len(self.train_inputs), (self.batch_size,), generator=generator)
            loss = nn.functional.cross_entropy(model(self.train_inputs[idx]), self.train_targets[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()

    def accuracy_of(self, x) -> float:
        key = np.asarray(x, dtype=np.int64).tobytes()
        if key not in self.cache:
            model = self.pruned_model(x)
            with torch.no_grad():
                pred = model(self.eval_inputs).argmax(1)
            self.cache[key] = float((pred == self.eval_targets).float().mean())
        return self.cache[key]

    def __call__(self, X) -> np.ndarray:
        return np.array([self.accuracy_of(x) for x in np.atleast_2d(X)])


class UserAccuracy:
    """Accuracy from the user's `module:function`, called with the pruned torch model; cached per genome."""

    name = "user"

    def __init__(self, spec: str, model: nn.Module, space: SearchSpace) -> None:
        self.fn = load_callable(spec, "accuracy estimator")
        self.name = spec
        self.model, self.space = model, space
        self.orders = channel_order(model, space)
        self.cache: dict[bytes, float] = {}

    def __call__(self, X) -> np.ndarray:
        out = []
        for x in np.atleast_2d(X):
            key = np.asarray(x, dtype=np.int64).tobytes()
            if key not in self.cache:
                pruned = apply_genome(self.model, self.space, x, self.orders).eval()
                try:
                    value = self.fn(pruned)
                except Exception as exc:
                    raise SearchError(f"accuracy function {self.name} raised {user_failure(exc)}") from None
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    raise SearchError(f"accuracy function {self.name} returned {value!r}, not a number") from None
                if not np.isfinite(number):
                    raise SearchError(f"accuracy function {self.name} returned {value!r}, not a finite number")
                self.cache[key] = number
            out.append(self.cache[key])
        return np.array(out)


class PruningProblem:
    """Two objectives to minimise, [latency_ms, -accuracy], and a latency-range constraint violation."""

    def __init__(self, space: SearchSpace, latency: LatencyModel, accuracy: Callable,
                 latency_range: tuple[float, float | None] | None = None) -> None:
        if latency_range is not None and not 0 <= latency_range[0] < (latency_range[1] or np.inf):
            raise SearchError(f"latency range must be 0 <= low < high, got {latency_range}")
        self.space, self.latency, self.accuracy, self.latency_range = space, latency, accuracy, latency_range
        self.n_var, self.xl, self.xu = space.n_var, space.xl, space.xu
        self.gene_axes = np.array([0] * space.n_width + [1] * space.n_density)   # width genes, density genes
        self.evaluations = 0

    def evaluate(self, X) -> tuple[np.ndarray, np.ndarray]:
        X = np.atleast_2d(X)
        lat = self.latency(X)
        acc = self.accuracy(X)
        self.evaluations += X.shape[0]
        cv = np.zeros(X.shape[0])
        if self.latency_range is not None:
            low, high = self.latency_range
            cv = np.maximum(0.0, low - lat) + (np.maximum(0.0, lat - high) if high is not None else 0.0)
        return np.column_stack([lat, -acc]), cv
