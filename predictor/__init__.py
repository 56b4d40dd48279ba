"""Latency predictors learned from a profile: features, models, evaluation, baselines, saved predictors.

`predictor.load(path).predict(layers)` is the API later stages use (see ARCHITECTURE.md).
"""
from predictor.errors import PredictorError
from predictor.models import LatencyPredictor
from predictor.persistence import Predictor, load, save

__all__ = ["LatencyPredictor", "Predictor", "PredictorError", "load", "save"]
