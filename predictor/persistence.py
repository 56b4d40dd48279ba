"""Saved predictors: a directory with the model (JSON state + skops trees, no pickle) and `card.json`.

Owns save/load, the card (device facts, runner version, feature-schema version, training-data hash,
metrics, SHA-256 of each model file) and every refusal: foreign format, schema or runner, tampering.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from predictor.errors import PredictorError
from predictor.features import FEATURE_NAMES, FEATURE_SCHEMA_VERSION, as_columns
from predictor.models import _PHYSICAL_TERMS as PHYSICAL_TERMS
from predictor.models import MODEL_KINDS, LatencyPredictor
from profiler.layerspec import IMPLS
from profiler.store import DB_NAME as PROFILE_DB

FORMAT = "jcw-predictor"
FORMAT_VERSION = 2
CARD = "card.json"
STATE = "model.json"
TREES = "model.skops"
#: Runner versions whose measurement semantics the features model (major.minor).
COMPATIBLE_RUNNERS = ("0.1",)
#: The only non-default types a saved tree model may contain; anything else is refused unloaded.
TRUSTED_TYPES = ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor", "sklearn.tree._tree.Tree")
_MAX_JSON_BYTES = 16 * 1024 * 1024


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def runner_series(version: Any) -> str:
    """'0.1.3' → '0.1': measurements of one series are comparable."""
    return ".".join(str(version).split(".")[:2])


def save(predictor: LatencyPredictor, directory: str | Path, card: Mapping[str, Any]) -> Path:
    """Write model files and the card (the caller's facts plus format, schema and file hashes)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        state = predictor.state()
        (directory / STATE).write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
        files = {STATE: _sha256(directory / STATE)}
        if predictor.estimator_ is not None:
            import skops.io as skops_io  # deferred: a linear predictor or a refusal need not pay ~3 s for it
            skops_io.dump(predictor.estimator_, directory / TREES)
            files[TREES] = _sha256(directory / TREES)
        elif (directory / TREES).exists():
            (directory / TREES).unlink()  # a stale file from an earlier save would mislead
        full_card = {**dict(card), "format": FORMAT, "format_version": FORMAT_VERSION,
                     "feature_schema_version": FEATURE_SCHEMA_VERSION, "features": list(FEATURE_NAMES),
                     "model": state["kind"], "files": files}
        (directory / CARD).write_text(json.dumps(full_card, indent=1, default=_json_default), encoding="utf-8")
    except OSError as exc:
        raise PredictorError(f"cannot write the predictor to {directory}: {exc.strerror or exc}") from None
    return directory


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        if path.stat().st_size > _MAX_JSON_BYTES:
            raise PredictorError(f"{what} {path} is implausibly large; refusing to read it")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PredictorError(f"{path.parent} is not a saved predictor (no {path.name}); "
                             "train one with `jcw train`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PredictorError(f"{what} {path} is unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise PredictorError(f"{what} {path} is not a JSON object")
    return data


class Predictor:
    """A loaded predictor: `predict(layers)` and its `card`."""

    def __init__(self, model: LatencyPredictor, card: dict[str, Any], path: Path) -> None:
        self.model = model
        self.card = card
        self.path = path

    def predict(self, layers: Any) -> dict[str, np.ndarray]:
        return self.model.predict(layers)

    def predict_impl(self, columns: Any, impl: str) -> np.ndarray:
        return self.model.predict_impl(as_columns(columns), impl)

    def __repr__(self) -> str:
        return f"Predictor({str(self.path)!r}, model={self.card.get('model')!r})"


def load(directory: str | Path, *, runner_version: str | None = None) -> Predictor:
    """Load a saved predictor, refusing foreign formats, schemas, runners and tampered files.

    `runner_version`, when given (e.g. the runner of a device about to be searched for), must be
    of the same series as the runner the predictor was trained with.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PredictorError(f"no predictor directory at {directory}; train one with `jcw train`")
    if not (directory / CARD).exists() and (directory / PROFILE_DB).exists():
        raise PredictorError(f"{directory} is a profile, not a predictor; train one from it with "
                             f"`jcw train --profile {directory} --out DIR`")
    card = _read_json(directory / CARD, "predictor card")
    if card.get("format") != FORMAT:
        raise PredictorError(f"{directory} is not a jcw predictor (card format {card.get('format')!r})")
    if card.get("format_version") != FORMAT_VERSION:
        raise PredictorError(f"predictor {directory} has format version {card.get('format_version')!r}; "
                             f"this jcw reads {FORMAT_VERSION}")
    if card.get("feature_schema_version") != FEATURE_SCHEMA_VERSION:
        raise PredictorError(f"predictor {directory} was trained on feature schema "
                             f"{card.get('feature_schema_version')!r}, this jcw computes schema "
                             f"{FEATURE_SCHEMA_VERSION}; retrain it with `jcw train`")
    runner = card.get("runner")
    trained_runner = runner.get("version") if isinstance(runner, dict) else None
    if runner_series(trained_runner) not in COMPATIBLE_RUNNERS:
        raise PredictorError(f"predictor {directory} was trained on runner version {trained_runner!r}; this jcw "
                             f"reads runner series {', '.join(COMPATIBLE_RUNNERS)}; re-profile and retrain")
    if runner_version is not None and runner_series(runner_version) != runner_series(trained_runner):
        raise PredictorError(f"predictor {directory} was trained on runner {trained_runner}, "
                             f"not on runner {runner_version}")
    files = card.get("files")
    if not isinstance(files, dict) or STATE not in files:
        raise PredictorError(f"predictor card {directory / CARD} lists no model files")
    for name, expected in files.items():
        if name not in (STATE, TREES):
            raise PredictorError(f"predictor card {directory / CARD} names an unexpected file {name!r}")
        path = directory / name
        if not path.is_file():
            raise PredictorError(f"predictor {directory} lacks its model file {name}")
        if _sha256(path) != expected:
            raise PredictorError(f"predictor file {path} does not match the hash in its card; "
                                 "it was modified or damaged, so it is refused")
    state = _read_json(directory / STATE, "predictor model")
    estimator = _load_trees(directory / TREES) if TREES in files else None
    try:
        model = LatencyPredictor.from_state(state, estimator)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise PredictorError(f"predictor model {directory / STATE} is malformed ({exc})") from None
    coef = model.physical_.coef_
    coef_fits = {"conv/dense", "conv/sparse"} <= set(coef) and all(
        len(c) == len(PHYSICAL_TERMS) + 1 for c in coef.values())
    if state.get("features") != list(FEATURE_NAMES) or model.kind_ not in MODEL_KINDS or not coef_fits \
            or (model.kind_ != "linear") != (estimator is not None):
        raise PredictorError(f"predictor model {directory / STATE} does not fit this jcw's features or files")
    return Predictor(model, card, directory)


def _load_trees(path: Path) -> Any:
    import skops.io as skops_io  # deferred, see save()
    from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
    try:
        untrusted = skops_io.get_untrusted_types(file=path)
        foreign = [t for t in untrusted if t not in TRUSTED_TYPES]
        if foreign:
            raise PredictorError(f"predictor file {path} contains the untrusted type {foreign[0]}; refused")
        estimator = skops_io.load(path, trusted=list(untrusted))
    except PredictorError:
        raise
    except Exception as exc:  # skops raises many types for a corrupt archive
        raise PredictorError(f"predictor file {path} is not a readable model ({type(exc).__name__})") from None
    # One tree model per implementation (see LatencyPredictor._fit_kind).
    if not isinstance(estimator, dict) or sorted(estimator) != sorted(IMPLS) or not all(
            isinstance(tree, (HistGradientBoostingRegressor, RandomForestRegressor)) for tree in estimator.values()):
        raise PredictorError(f"predictor file {path} does not hold one tree model per implementation "
                             f"({', '.join(IMPLS)})")
    return estimator
