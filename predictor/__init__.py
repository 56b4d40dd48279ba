"""Latency predictors learned from a profile: features, models, evaluation, baselines, saved predictors."""
