"""Priors: known devices' saved predictors that a transfer predictor builds on.

Owns a prior's identity (SHA-256 over its card and listed files, as profiler.transfer_prior computes it),
loading one as a --prior with every refusal in one sentence, choosing the closest of several by the new
profile's probe latencies, and the copy a saved transfer predictor carries (`prior/`, checked against the
hash in its card whenever it is loaded).
"""
from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jcw.predictor import persistence, transfer_trees
from jcw.predictor.errors import PredictorError
from jcw.predictor.features import FEATURE_NAMES
from jcw.predictor.models import training_arrays
from jcw.predictor.transfer import GROUPS, TransferPredictor, _prior_model, fit_scale
from jcw.profiler.transfer_prior import PriorCardError, predictor_sha256

PRIOR_DIR = "prior"
#: A transfer predictor's prior may itself be one; deeper chains are refused (and would be slow).
MAX_PRIOR_DEPTH = 3


# ---- a prior's identity ------------------------------------------------------------------------
def prior_sha256(directory: str | Path) -> str:
    """SHA-256 over a saved predictor's card and every model file the card lists (name and content hash);
    a transfer predictor's card names its own prior's hash, so a chain is covered too."""
    directory = Path(directory)
    card = persistence._read_json(directory / persistence.CARD, "predictor card")
    files = card.get("files")
    if not isinstance(files, dict) or not set(files) <= set(persistence.MODEL_FILES):
        raise PredictorError(f"predictor card {directory / persistence.CARD} does not list its model files")
    try:
        return predictor_sha256(directory, card)
    except PriorCardError as exc:
        raise PredictorError(str(exc).replace("--prior ", "predictor ", 1)) from None


@dataclass(frozen=True)
class Prior:
    """A known device's saved predictor: where it was read, its hash, and the loaded predictor."""

    path: Path
    sha256: str
    loaded: Any  # persistence.Predictor

    @property
    def model(self) -> Any:
        return self.loaded.model

    def describe(self) -> dict[str, Any]:
        card = self.loaded.card
        return {"path": str(self.path), "sha256": self.sha256, "device_address": card.get("device_address"),
                "threads": card.get("threads"), "runner_version": card.get("runner_version"),
                "training_data_hash": card.get("training_data_hash"), "model": card.get("model")}


def load_prior(directory: str | Path, runner_version: str | None = None) -> Prior:
    """A prior for a profile measured with `runner_version`: missing, foreign (format, feature schema, runner
    series, runtime) or tampered predictors are refused in one sentence naming --prior."""
    directory = Path(directory)
    try:
        loaded = persistence.load(directory, runner_version=runner_version, layers_only=True)
        return Prior(directory, prior_sha256(directory), loaded)
    except PredictorError as exc:
        raise PredictorError(f"--prior {directory} cannot be used: {str(exc).rstrip('.')}") from None


# ---- choosing among priors ------------------------------------------------------------------------
def probe_fit(prior: Any, rows: Sequence[Mapping[str, Any]], shrinkage: float = 8.0) -> dict[str, float]:
    """How well a prior explains the new device's measured rows: median |error| as is and after the
    per-operator rescaling (the closeness that decides), and the share within ±10 % after it."""
    columns, impl, latency = training_arrays(rows)
    log_prior = np.log(TransferPredictor._stacked(
        columns, impl, lambda cols, name: _prior_model(prior).predict_impl(cols, name)))
    log_ratio = np.log(latency) - log_prior
    scale = fit_scale(columns["op"], impl, log_prior, log_ratio, shrinkage)
    rescaled = np.abs(np.exp(log_ratio - TransferPredictor._log_scale(scale, columns, impl, log_prior)) - 1.0)
    return {"as_is": float(np.median(np.abs(np.exp(log_ratio) - 1.0))), "rescaled": float(np.median(rescaled)),
            "rescaled_within10": float(np.mean(rescaled <= 0.10))}


def choose_prior(priors: Sequence[Prior], rows: Sequence[Mapping[str, Any]]) -> tuple[Prior, list[dict[str, Any]]]:
    """The prior closest to the new device (smallest median |error| on its measured rows after per-operator
    rescaling: a device uniformly twice as slow is as close as an identical one), with every prior's scores."""
    if not priors:
        raise PredictorError("parameter 'priors' must name at least one prior")
    scores = [{"path": str(p.path), "sha256": p.sha256, **probe_fit(p, rows)} for p in priors]
    best = min(range(len(priors)), key=lambda i: scores[i]["rescaled"])
    for i, score in enumerate(scores):
        score["chosen"] = i == best
    return priors[best], scores


# ---- the prior inside a saved transfer predictor ------------------------------------------------
def _snapshot(directory: Path, depth: int = 0) -> dict[str, bytes]:
    """The bytes of a predictor's card, its listed model files and (for a chain) its own prior, by relative path."""
    if depth > MAX_PRIOR_DEPTH:
        raise PredictorError(f"the prior chain at {directory} is deeper than {MAX_PRIOR_DEPTH} predictors")
    card = persistence._read_json(directory / persistence.CARD, "predictor card")
    names = [persistence.CARD, *sorted(card.get("files") or {})]
    if not set(names[1:]) <= set(persistence.MODEL_FILES):  # loaded priors are checked; a copy must not escape
        raise PredictorError(f"predictor card {directory / persistence.CARD} names an unexpected file")
    out = {name: (directory / name).read_bytes() for name in names}
    if (directory / PRIOR_DIR / persistence.CARD).is_file():
        out.update({f"{PRIOR_DIR}/{name}": data for name, data in _snapshot(directory / PRIOR_DIR, depth + 1).items()})
    return out


def embed(model: Any, directory: Path) -> dict[str, Any] | None:
    """Copy a transfer predictor's prior into `directory/prior` and return its card entry; for any other
    model remove a stale copy (a predictor saved there before) and return None."""
    target = directory / PRIOR_DIR
    prior = getattr(model, "prior", None) if isinstance(model, TransferPredictor) else None
    if prior is not None and not isinstance(prior, Prior):
        raise PredictorError("a transfer predictor can only be saved with a prior loaded from a directory "
                             "(predictor.priors.load_prior)")
    # Read first: the prior may live inside the directory being written (a retrain over the same --out).
    files = _snapshot(prior.path) if prior is not None else None
    if (target / persistence.CARD).is_file():
        shutil.rmtree(target)
    if files is None:
        return None
    for name, data in files.items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(data)
    if prior_sha256(target) != prior.sha256:
        shutil.rmtree(target)
        raise PredictorError(f"the prior {prior.path} changed while this predictor was trained; train again")
    return prior.describe()


def load_model(directory: Path, card: Mapping[str, Any], files: Mapping[str, str], state: Mapping[str, Any],
               depth: int) -> TransferPredictor:
    """The layer model of a saved transfer predictor, its prior checked against the hash in the card."""
    if depth >= MAX_PRIOR_DEPTH:
        raise PredictorError(f"predictor {directory} is a chain of more than {MAX_PRIOR_DEPTH} priors; refused")
    entry = card.get("prior")
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        raise PredictorError(f"predictor card {directory / persistence.CARD} names no prior for its transfer model")
    target = directory / PRIOR_DIR
    if not (target / persistence.CARD).is_file():
        raise PredictorError(f"transfer predictor {directory} lacks its prior ({PRIOR_DIR}/{persistence.CARD})")
    if prior_sha256(target) != entry["sha256"]:
        raise PredictorError(f"the prior inside {directory} does not match the hash in its card; it was modified "
                             "or damaged, so it is refused")
    prior = Prior(target, entry["sha256"], persistence.load(target, layers_only=True, _depth=depth + 1))
    trees = None
    if persistence.TREES in files:
        from sklearn.ensemble import HistGradientBoostingRegressor
        trees = persistence._load_trusted(directory / persistence.TREES)
        # One model (the feature strategy's, or the residual one's as jcw saved it before its trees were
        # per operator group), or {"op/impl": model} of the residual strategy.
        per_group = isinstance(trees, dict) and bool(trees) and set(trees) <= set(GROUPS) and all(
            isinstance(model, HistGradientBoostingRegressor) for model in trees.values())
        if not (per_group or isinstance(trees, HistGradientBoostingRegressor)):
            raise PredictorError(f"predictor file {directory / persistence.TREES} does not hold the transfer "
                                 "model's gradient-boosted trees")
    try:
        model = TransferPredictor.from_state(state, trees, prior)
        model._validate_params()
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise PredictorError(f"predictor model {directory / persistence.STATE} is malformed ({exc})") from None
    wants_trees = model.strategy == "feature" or (model.strategy == "residual" and model.tree_weight_ > 0)
    if state.get("features") != list(FEATURE_NAMES) or wants_trees != (trees is not None) \
            or (model.strategy == "feature") != (model.physical_ is not None) \
            or (isinstance(trees, dict) and (model.strategy != "residual"
                                             or state.get("residual_design") != list(transfer_trees.DESIGN))):
        raise PredictorError(f"predictor model {directory / persistence.STATE} does not fit this jcw's features "
                             "or files")
    return model
