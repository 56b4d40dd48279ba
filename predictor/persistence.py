"""Saved predictors: a directory with the layer model and the whole-program models of the runtimes
"executorch" and "sparse" (JSON state + skops trees, no pickle) and `card.json`; the loaded `Predictor`
answers for layers and for whole programs on either runtime.

Owns save/load, the card (device facts, runner version, runtime, threads, feature-schema version,
training-data hash, metrics, SHA-256 of each model file) and every refusal: foreign format, schema or
runner, tampering.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jcw.predictor import sparse_runtime
from jcw.predictor.errors import PredictorError
from jcw.predictor.features import FEATURE_NAMES, FEATURE_SCHEMA_VERSION, as_columns
from jcw.predictor.models import _PHYSICAL_TERMS as PHYSICAL_TERMS
from jcw.predictor.models import MODEL_KINDS, TREE_GROUPINGS, LatencyPredictor, tree_group_keys
from jcw.predictor.programs import RUNTIME, OtherTermsError, ProgramModel, design, per_program, spec_parts
from jcw.predictor.sparse_runtime import SparseProgramModel
from jcw.profiler.layerspec import IMPLS
from jcw.profiler.store import DB_NAME as PROFILE_DB

FORMAT = "jcw-predictor"
#: 3: whole-program model for the runtime "executorch" (format 2 predicted a sum of convolutions). The sparse
#: runtime's model came later as two more optional files and a card key (`sparse_program_model`, absent from
#: earlier predictors, which load with none), so the format stayed 3.
FORMAT_VERSION = 3
CARD = "card.json"
STATE = "model.json"
TREES = "model.skops"
PROGRAM_STATE = "programs.json"
PROGRAM_TREES = "programs.skops"
SPARSE_PROGRAM_STATE = "programs_sparse.json"
SPARSE_PROGRAM_TREES = "programs_sparse.skops"
MODEL_FILES = (STATE, TREES, PROGRAM_STATE, PROGRAM_TREES, SPARSE_PROGRAM_STATE, SPARSE_PROGRAM_TREES)
#: Per runtime: the card key of its program model, its files and its class.
PROGRAM_MODELS = {RUNTIME: ("program_model", PROGRAM_STATE, PROGRAM_TREES, ProgramModel),
                  sparse_runtime.RUNTIME: ("sparse_program_model", SPARSE_PROGRAM_STATE, SPARSE_PROGRAM_TREES,
                                           SparseProgramModel)}
#: Runner versions whose measurement semantics the features model (major.minor). Series 0.1 timed
#: Debian's XNNPACK build, not the kernels inside the executorch wheel that a deployed .pte runs, so its
#: layer latencies do not describe the deployed program: refused.
COMPATIBLE_RUNNERS = ("0.2",)
#: What a predictor without a program model answers for a whole program, and how the search says it.
FALLBACK = "sum of dense layers (no program model: the profile had no measured programs)"
#: The only non-default types a saved tree model may contain; anything else is refused unloaded.
TRUSTED_TYPES = ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor", "sklearn.tree._tree.Tree")
_MAX_JSON_BYTES = 16 * 1024 * 1024


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def runner_series(version: Any) -> str:
    """'0.1.3' → '0.1': measurements of one series are comparable."""
    return ".".join(str(version).split(".")[:2])


def save(predictor: LatencyPredictor, directory: str | Path, card: Mapping[str, Any],
         program_model: ProgramModel | None = None, sparse_program_model: SparseProgramModel | None = None) -> Path:
    """Write model files and the card (the caller's facts plus format, schema, runtime, program models and
    file hashes). Without a program model the card says `program_model: null` (`sparse_program_model: null`
    for the sparse runtime's)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        state = predictor.state()
        files = {STATE: _write_json(directory / STATE, state)}
        if predictor.estimator_ is not None:
            files[TREES] = _write_trees(directory / TREES, predictor.estimator_)
        program_cards = {}
        for model, (key, state_file, trees_file, _) in zip((program_model, sparse_program_model),
                                                           PROGRAM_MODELS.values()):
            program_cards[key] = None
            if model is None:
                continue
            program_state = model.state()
            files[state_file] = _write_json(directory / state_file, program_state)
            if model.trees_ is not None:
                files[trees_file] = _write_trees(directory / trees_file, model.trees_)
            program_cards[key] = {k: program_state[k]
                                  for k in ("kind", "coef", "borrowed", "cv", "n_training_programs")}
        for name in MODEL_FILES:
            if name not in files and (directory / name).exists():
                (directory / name).unlink()  # a stale file from an earlier save would mislead
        from jcw.predictor import priors  # priors builds on this module
        prior = priors.embed(predictor, directory)
        full_card = {**dict(card), "format": FORMAT, "format_version": FORMAT_VERSION,
                     "feature_schema_version": FEATURE_SCHEMA_VERSION, "features": list(FEATURE_NAMES),
                     "model": state["kind"], "runtime": RUNTIME, **program_cards, "files": files,
                     "prior": None if prior is None else {**dict(card.get("prior") or {}), **prior}}
        (directory / CARD).write_text(json.dumps(full_card, indent=1, default=_json_default), encoding="utf-8")
    except OSError as exc:
        raise PredictorError(f"cannot write the predictor to {directory}: {exc.strerror or exc}") from None
    return directory


def _write_json(path: Path, state: Mapping[str, Any]) -> str:
    path.write_text(json.dumps(state, indent=1, sort_keys=True, default=_json_default), encoding="utf-8")
    return _sha256(path)


def _write_trees(path: Path, estimator: Any) -> str:
    import skops.io as skops_io  # deferred: a linear predictor or a refusal need not pay ~3 s for it
    skops_io.dump(estimator, path)
    return _sha256(path)


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
    """A loaded predictor: `predict(layers)` per layer, `predict_programs(specs, runtime)` per whole program
    (runtime "executorch" or "sparse"), and its `card`. `program_model` is None when the profile had no
    programs: whole programs are then the sum of their layers' dense latencies (`FALLBACK`);
    `sparse_program_model` is None when it had no sparse-engine programs (sparse_runtime.FALLBACK)."""

    def __init__(self, model: LatencyPredictor, card: dict[str, Any], path: Path | None,
                 program_model: ProgramModel | None = None,
                 sparse_program_model: SparseProgramModel | None = None) -> None:
        self.model = model
        self.card = card
        self.path = path
        self.program_model = program_model
        self.sparse_program_model = sparse_program_model

    def predict(self, layers: Any) -> dict[str, np.ndarray]:
        return self.model.predict(layers)

    def extrapolated(self, layers: Any) -> np.ndarray | None:
        """Per layer, whether it lies outside the ranges the predictor was trained on (None: the card
        predates training ranges)."""
        from jcw.predictor import ranges
        return ranges.extrapolated(self.card.get("training_ranges"), as_columns(layers))

    def predict_impl(self, columns: Any, impl: str) -> np.ndarray:
        return self.model.predict_impl(as_columns(columns), impl)

    @property
    def runtime(self) -> str:
        return RUNTIME

    @property
    def program_note(self) -> str:
        """How whole programs are predicted: the program model's kind, or the fallback."""
        return FALLBACK if self.program_model is None else f"program model ({self.program_model.kind_})"

    @property
    def xnnpack_sparse_inference(self) -> bool:
        """Whether the device's XNNPACK rewrites qualifying networks to NCHW (its program runner's header): the
        engine then runs them inside XNNPACK's own sparse inference (profiler.engine_plan)."""
        from jcw.profiler import engine_plan
        return engine_plan.xnnpack_sparse_inference(self.card.get("program_runner"))

    @property
    def sparse_program_note(self) -> str:
        """How whole programs are predicted on the sparse engine: its program model's kind, or the fallback."""
        model = self.sparse_program_model
        return sparse_runtime.FALLBACK if model is None else f"sparse program model ({model.kind_})"

    def predict_program_parts(self, conv_ms: Any, ops: Mapping[str, Any], n_nodes: Any, n_conv: Any
                              ) -> np.ndarray:
        """Vectorised whole-program latency (ms) of n programs from their parts.

        conv_ms: (n,) sum of the dense-kernel latency (ms, `predict_dense`) of each program's conv and dwconv
        layers — not its linear layers. ops: arrays over all other operators of all programs, linear layers
        included as op "linear" (in_elems = c = in features, out_c = out features, h = w = out_h = out_w = 1):
        "program" (index into n), "op", "c", "h", "w", "out_c", "out_h", "out_w", "k", "stride" and
        optionally "in_elems" (elements of all inputs; add and concat read several). n_nodes: (n,) nodes per
        program; n_conv: (n,) conv + dwconv + linear layers per program.
        """
        x = design(conv_ms, ops, n_nodes, n_conv)
        if self.program_model is not None:
            return self.program_model.predict(x)
        return x[:, 0] + self._linear_dense_ms(ops, len(x))

    def predict_sparse_program_parts(self, engine: Mapping[str, Any], ops: Mapping[str, Any], n_nodes: Any,
                                     n_conv: Any) -> np.ndarray:
        """Vectorised whole-program latency (ms) of n programs on the sparse engine, from their parts.

        engine: {name: (n,) array} for every name of sparse_runtime.ENGINE_TERMS — dense_conv_ms (`predict_dense`
        ms of the conv and dwconv layers the engine runs NHWC), nchw_dwconv_ms (the same for the depthwise layers
        profiler.engine_plan.layout_plan runs NCHW), sparse_conv_ms (`predict_impl(columns, "sparse")` / 1000 of
        the layers engine_plan.runs_sparse, at their density), conversion_elems and conversions (layout_plan's);
        sparse_runtime.engine_parts builds it from per-layer (n, layers) arrays. ops, n_nodes, n_conv: as for
        predict_program_parts.
        """
        return sparse_runtime.predict_parts(self.sparse_program_model, self._linear_dense_ms, engine, ops, n_nodes,
                                            n_conv)

    def _linear_dense_ms(self, ops: Mapping[str, Any], n: int) -> np.ndarray:
        linear = np.asarray(ops["op"], dtype=object) == "linear"
        if not linear.any():
            return np.zeros(n)
        ones = np.ones(int(linear.sum()), dtype=np.int64)
        features = np.asarray(ops["in_elems"] if "in_elems" in ops else ops["c"], dtype=np.int64)[linear]
        columns = {"op": np.full(len(ones), "conv", dtype=object), "cin": features,
                   "cout": np.asarray(ops["out_c"])[linear], "k": ones, "stride": ones, "pad": 0 * ones,
                   "h": ones, "w": ones}
        return per_program(self.model.predict_dense(columns), np.asarray(ops["program"])[linear], n)

    def predict_dense(self, layers: Any) -> np.ndarray:
        """Dense-kernel ms per layer (density ignored: ExecuTorch runs pruned weights dense)."""
        return self.model.predict_dense(layers)

    def predict_programs(self, specs: Any, runtime: str = RUNTIME) -> dict[str, np.ndarray]:
        """Whole-program latency of program specs (profiler.programs) under `runtime`.

        "executorch" returns arrays: latency_ms; conv_ms, the share of it spent in conv and dwconv layers;
        other_ms, the rest (other operators, linear layers, delegate and runtime overheads); layers_dense_ms,
        the sum of every layer's dense latency (what a predictor without program model answers). "sparse"
        (the network engine, which runs every weight-pruned groups-1 convolution sparse) returns
        sparse_runtime.predict_specs's arrays; a spec the engine cannot run is a PredictorError. One call
        of the layer predictor covers all layers of all specs.
        """
        if runtime == sparse_runtime.RUNTIME:
            return sparse_runtime.predict_specs(self.model, self.sparse_program_model, specs,
                                                self.xnnpack_sparse_inference)
        if runtime != RUNTIME:
            raise PredictorError(f"runtime must be {RUNTIME} or {sparse_runtime.RUNTIME}, got {runtime!r}"[:200])
        parts = spec_parts(specs)
        n = parts["n"]
        dense = self.model.predict_dense(parts["layers"]) if len(parts["layer_program"]) else np.zeros(0)
        linear = parts["is_linear"]
        conv_sum = per_program(dense[~linear], parts["layer_program"][~linear], n)
        layers_sum = per_program(dense, parts["layer_program"], n)
        if self.program_model is None:
            return {"latency_ms": layers_sum, "conv_ms": conv_sum, "other_ms": layers_sum - conv_sum,
                    "layers_dense_ms": layers_sum}
        latency, conv, other = self.program_model.split(
            design(conv_sum, parts["ops"], parts["n_nodes"], parts["n_conv"]))
        return {"latency_ms": latency, "conv_ms": conv, "other_ms": other, "layers_dense_ms": layers_sum}

    def __repr__(self) -> str:
        return (f"Predictor({str(self.path)!r}, model={self.card.get('model')!r}, "
                f"program_model={None if self.program_model is None else self.program_model.kind_!r})")


def load(directory: str | Path, *, runner_version: str | None = None, layers_only: bool = False,
         _depth: int = 0) -> Predictor:
    """Load a saved predictor, refusing foreign formats, schemas, runners and tampered files.

    `runner_version`, when given (e.g. the runner of a device about to be searched for), must be
    of the same series as the runner the predictor was trained with. `layers_only` leaves its program models
    unread (what a prior needs: its layer model; a prior whose program model another jcw version fitted
    still serves). A transfer predictor's prior (its `prior/` directory) is loaded that way and must match the
    hash in the card (`_depth` counts the chain).
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
        raise PredictorError(f"predictor {directory} has format version {card.get('format_version')!r} and this jcw "
                             f"reads only {FORMAT_VERSION} (whole-program latency on ExecuTorch, not a sum of "
                             "convolutions); retrain it with `jcw train`")
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
        if name not in MODEL_FILES:
            raise PredictorError(f"predictor card {directory / CARD} names an unexpected file {name!r}")
        path = directory / name
        if not path.is_file():
            raise PredictorError(f"predictor {directory} lacks its model file {name}")
        if _sha256(path) != expected:
            raise PredictorError(f"predictor file {path} does not match the hash in its card; "
                                 "it was modified or damaged, so it is refused")
    state = _read_json(directory / STATE, "predictor model")
    if state.get("kind") == "transfer":
        from jcw.predictor import priors
        model = priors.load_model(directory, card, files, state, _depth)
        return Predictor(model, card, directory, *_load_program_models(directory, card, files, layers_only))
    estimator = _load_trees(directory / TREES) if TREES in files else None
    try:
        model = LatencyPredictor.from_state(state, estimator)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise PredictorError(f"predictor model {directory / STATE} is malformed ({exc})") from None
    coef = model.physical_.coef_
    coef_fits = {"conv/dense", "conv/sparse"} <= set(coef) and all(
        len(c) == len(PHYSICAL_TERMS) + 1 for c in coef.values())
    groups_fit = estimator is None or set(estimator) == {
        key for grouping in model.tree_groupings for key in tree_group_keys(grouping)}
    if state.get("features") != list(FEATURE_NAMES) or model.kind_ not in MODEL_KINDS or not coef_fits \
            or (model.kind_ != "linear") != (estimator is not None) or not groups_fit:
        raise PredictorError(f"predictor model {directory / STATE} does not fit this jcw's features or files")
    return Predictor(model, card, directory, *_load_program_models(directory, card, files, layers_only))


def _load_program_models(directory: Path, card: Mapping[str, Any], files: Mapping[str, str],
                         layers_only: bool = False) -> list[Any]:
    """[executorch program model, sparse program model], each None when the card names none (a card from
    before the sparse runtime has no `sparse_program_model` key: none) or `layers_only` asks for none."""
    if card.get("runtime") != RUNTIME:
        raise PredictorError(f"predictor {directory} is for the runtime {card.get('runtime')!r}; "
                             f"this jcw predicts {RUNTIME}")
    if layers_only:
        return [None] * len(PROGRAM_MODELS)
    return [_load_program_model(directory, card, files, *entry) for entry in PROGRAM_MODELS.values()]


def _load_program_model(directory: Path, card: Mapping[str, Any], files: Mapping[str, str], key: str,
                        state_file: str, trees_file: str, cls: type[ProgramModel]) -> ProgramModel | None:
    what = "program model" if cls is ProgramModel else "sparse program model"
    if card.get(key) is None:
        if state_file in files or trees_file in files:
            raise PredictorError(f"predictor card {directory / CARD} lists {what} files but no {what}")
        return None
    if state_file not in files:
        raise PredictorError(f"predictor card {directory / CARD} names a {what} but lists no {state_file}")
    state = _read_json(directory / state_file, what)
    trees = _load_program_trees(directory / trees_file) if trees_file in files else None
    try:
        return cls.from_state(state, trees)
    except OtherTermsError:
        raise PredictorError(f"{what} {directory / state_file} was fitted by another version of jcw (its terms "
                             f"differ); train the predictor again with `jcw train`") from None
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise PredictorError(f"{what} {directory / state_file} is malformed ({exc})") from None


def _load_program_trees(path: Path) -> Any:
    from sklearn.ensemble import HistGradientBoostingRegressor
    estimator = _load_trusted(path)
    if not isinstance(estimator, HistGradientBoostingRegressor):
        raise PredictorError(f"predictor file {path} does not hold the program model's gradient-boosted trees")
    return estimator


def _load_trusted(path: Path) -> Any:
    """A skops file whose every non-default type is on TRUSTED_TYPES; anything else refused unloaded."""
    import skops.io as skops_io  # deferred, see save()
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
    return estimator


def _load_trees(path: Path) -> Any:
    from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
    estimator = _load_trusted(path)
    # One tree model per group of each tree grouping (see LatencyPredictor._fit_kind); from_state checks
    # that the groups are those of the groupings the state names.
    known = {key for grouping in TREE_GROUPINGS for key in tree_group_keys(grouping)}
    if not isinstance(estimator, dict) or not set(IMPLS) <= set(estimator) <= known or not all(
            isinstance(tree, (HistGradientBoostingRegressor, RandomForestRegressor)) for tree in estimator.values()):
        raise PredictorError(f"predictor file {path} does not hold one tree model per implementation "
                             f"({', '.join(IMPLS)}) and per group of its tree groupings")
    return estimator
