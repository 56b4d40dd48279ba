"""Latency predictors learned from a profile: features, models, evaluation, baselines, saved predictors.

`predictor.load(path).predict(layers)` (per layer) and `.predict_programs(specs)` /
`.predict_program_parts(...)` (whole ExecuTorch programs) are the API later stages use (see ARCHITECTURE.md).
"""
from importlib import import_module
from typing import Any

from jcw.predictor.errors import PredictorError

# Deferred so that `jcw --help` and the CLIs of other stages do not pay for scikit-learn and skops.
_LAZY = {"LatencyPredictor": "jcw.predictor.models", "Predictor": "jcw.predictor.persistence",
         "load": "jcw.predictor.persistence", "save": "jcw.predictor.persistence",
         "ProgramModel": "jcw.predictor.programs"}

__all__ = ["LatencyPredictor", "Predictor", "PredictorError", "ProgramModel", "load", "save"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'predictor' has no attribute {name!r}")
