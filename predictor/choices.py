"""The names `jcw train` offers as choices: layer-model families and transfer strategies.

Kept apart from the estimators (predictor.models, predictor.transfer), which import scikit-learn, so that
building the `jcw` command line stays fast.
"""
from __future__ import annotations

MODEL_KINDS = ("hybrid", "gbm", "rf", "linear")
#: scale: the prior's latency times a per-operator factor that may change with the layer's size (a robust
#: line in log space per (op, impl), shrunk toward the pooled one); residual: a base per (op, impl), either
#: the prior times a factor plus a fixed cost per thread-pool dispatch or scale's line, then small trees per
#: (op, impl) on what is left, split on the layer's shape (kernel, stride, channels and their remainder past
#: SIMD tiles, output pixels) and bytes, and last what the measured layers still depart by, averaged by a
#: Gaussian kernel over each layer's nearest measured shapes (predictor.transfer_local); the base and the
#: trees' weight, then the kernel or none, chosen by how they do on shapes held out of their fit; feature: the
#: new device's own physical model and trees, with the prior's log-latency as one more feature.
TRANSFER_STRATEGIES = ("scale", "residual", "feature")
#: Chosen on the transfer curve (benchmarks/RESULTS.md, benchmarks/bench_transfer.py): what a
#: TransferPredictor does unless told otherwise, and the first pick among equals of `auto`.
DEFAULT_TRANSFER_STRATEGY = "residual"
#: `jcw train --strategy auto` (its default): each strategy, and no prior at all, scored on the new profile's
#: own layers held out by shape; the best is used (predictor.pipeline.choose_transfer).
AUTO_STRATEGY = "auto"
