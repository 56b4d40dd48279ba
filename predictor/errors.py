"""The predictor stage's one user-facing error type.

`PredictorError` carries a single sentence; the `jcw` dispatcher prints it without a traceback.
"""
from __future__ import annotations


class PredictorError(Exception):
    """A predictor cannot be trained, loaded or asked: bad input, foreign version, tampered file."""
