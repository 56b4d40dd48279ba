"""`jcw train` end to end: read a profile, fit the layer predictor and (when the profile has measured
programs) the whole-program model, run the evaluation protocols against the baselines, write the saved
predictor, its card and its report.

Returns plain dicts so the CLI, the report and the benchmark all print the same figures.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from predictor import baselines, efficiency, evaluation, persistence, program_eval
from predictor.errors import PredictorError
from predictor.features import as_columns, rows_to_columns
from predictor.models import LatencyPredictor
from predictor.programs import RUNTIME
from profiler.store import ProfileStore

Row = Mapping[str, Any]
OURS = "ours"
BASELINES: dict[str, Callable[[], Any]] = {
    "macs-proportional": baselines.MacsProportional,
    "nn-meter-rf": baselines.NnMeterForest,
    "jcw-interpolation": baselines.JcwInterpolation,
}
STABLE_SET = "holdout, rounds agree ±5%"
SETS = ("random split", "unseen shapes", "real-network holdout", STABLE_SET)


def read_profile(directory: str | Path, threads: int | None = None) -> dict[str, Any]:
    """Rows of a profile split into training and held-out, with the facts a card needs."""
    with ProfileStore(directory) as store:  # StoreError (no or foreign profile) is already one sentence
        rows = store.measurements()
        program_rows = store.program_measurements() if hasattr(store, "program_measurements") else []
        info = {"device_facts": store.get_meta("device_facts") or {}, "runner": store.get_meta("runner") or {},
                "device_address": store.get_meta("device_address"), "fingerprint": store.fingerprint(),
                "program_runner": store.get_meta("program_runner"), "runtime": store.get_meta("runtime", RUNTIME)}
        meta_threads = store.get_meta("threads")
    runner_version = info["runner"].get("version")
    if persistence.runner_series(runner_version) not in persistence.COMPATIBLE_RUNNERS:
        raise PredictorError(f"profile {directory} was measured with layer runner {runner_version!r}, whose XNNPACK "
                             f"is not the one a deployed .pte runs (this jcw trains on runner series "
                             f"{', '.join(persistence.COMPATIBLE_RUNNERS)}); re-profile the device")
    if info["runtime"] != RUNTIME:
        raise PredictorError(f"profile {directory} is for the runtime {info['runtime']!r}; this jcw trains {RUNTIME}")
    counts = sorted({r["threads"] for r in rows})
    if threads is None and len(counts) > 1:
        raise PredictorError(f"profile {directory} holds measurements at threads {counts}; choose one with --threads")
    if threads is not None:
        rows = [r for r in rows if r["threads"] == threads]
        if not rows:
            raise PredictorError(f"profile {directory} has no measurements at threads {threads} (it has {counts})")
    training = [r for r in rows if r["sample"] != "holdout"]
    holdout = [r for r in rows if r["sample"] == "holdout"]
    if len(training) < 8:
        raise PredictorError(f"profile {directory} has only {len(training)} measured training configurations; "
                             "profile with a larger --budget first")
    layer_threads = threads if threads is not None else (counts[0] if counts else None)
    return {**info, "training": training, "holdout": holdout, "threads": layer_threads if layer_threads is not None
            else meta_threads, "programs": program_eval.check_threads(program_rows, layer_threads)}


def _best_per_layer(model: Any, layers: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    columns = as_columns(rows_to_columns(list(layers)))
    dense = model.predict_impl(columns, "dense")
    sparse = np.full(len(dense), np.nan)
    conv = columns["op"] == "conv"
    if conv.any():
        sparse[conv] = model.predict_impl({k: v[conv] for k, v in columns.items()}, "sparse")
    use_sparse = sparse < dense
    return np.where(use_sparse, sparse, dense) / 1000.0, np.where(use_sparse, "sparse", "dense").astype(object)


def evaluate_models(models: Mapping[str, Any], test: Sequence[Row]) -> dict[str, dict[str, float]]:
    truth = evaluation.latencies(test)
    return {name: evaluation.metrics(evaluation.predict_rows(model, test), truth) for name, model in models.items()}


def scored(models: Mapping[str, Any], test: Sequence[Row]) -> dict[str, Any]:
    """One held-out set's entry: every model's metrics next to the set's noise and label floors."""
    return {"models": evaluate_models(models, test), "noise_floor": evaluation.noise_floor(test),
            "label_floor": evaluation.label_floor(test)}


def fit_all(training: Sequence[Row], params: Mapping[str, Any]) -> dict[str, Any]:
    models = {OURS: LatencyPredictor(**params).fit(training)}
    models.update({name: make().fit(training) for name, make in BASELINES.items()})
    return models


def evaluate(training: Sequence[Row], holdout: Sequence[Row], params: Mapping[str, Any], seed: int = 0,
             say: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Ours and every baseline on the three held-out sets and at network level, at one training budget."""
    sets: dict[str, dict[str, Any]] = {}
    for name, split in (("random split", evaluation.random_split), ("unseen shapes", evaluation.grouped_split)):
        say(f"evaluating on the {name}")
        train_rows, test_rows = split(training, 0.2, seed)
        sets[name] = scored(fit_all(train_rows, params), test_rows)
    say("fitting on all training data")
    final = fit_all(training, params)
    network: dict[str, Any] = {}
    best_impl: dict[str, Any] = {}
    if holdout:
        say("evaluating on the real-network holdout")
        sets["real-network holdout"] = scored(final, holdout)
        stable = evaluation.stable_rows(holdout)
        if stable:
            sets[STABLE_SET] = scored(final, stable)
        layers = evaluation.measured_layers(holdout)
        nets, coverage = evaluation.sample_networks(layers, seed=seed)
        network = {"construction": "real network layer sequences (ResNet-18/50, MobileNetV1/V2), each position "
                                   "filled with a held-out layer of the same (op, k, stride, h)",
                   "position_coverage": coverage, "models": {}}
        for name, fitted in final.items():
            best_ms, impl = _best_per_layer(fitted, layers)
            network["models"][name] = evaluation.network_errors(best_ms, layers, nets)
            best_impl[name] = evaluation.best_impl_agreement(impl, layers)
    return {"final": final, "sets": sets, "network": network, "best_impl": best_impl}


def train(profile_dir: str | Path, out_dir: str | Path, *, model: str = "auto", threads: int | None = None,
          seed: int = 0, curve: bool = False, curve_budgets: Sequence[int] = efficiency.DEFAULT_BUDGETS,
          progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fit, evaluate (three held-out sets, network level, baselines, optional curve), save, report."""
    say = progress or (lambda message: None)
    started = time.monotonic()
    data = read_profile(profile_dir, threads)
    training, holdout = data["training"], data["holdout"]
    params = {"model": model, "random_state": seed}
    LatencyPredictor(**params)._validate_params()

    evaluated = evaluate(training, holdout, params, seed, say)
    final, sets, network, best_impl = (evaluated[k] for k in ("final", "sets", "network", "best_impl"))
    curve_points: list[dict[str, Any]] = []
    if curve and holdout:
        curve_points = efficiency.sample_efficiency(training, holdout, curve_budgets, seed=seed, model=model,
                                                    progress=say)

    ours: LatencyPredictor = final[OURS]
    programs = program_eval.evaluate_programs(ours, data["programs"], seed=seed, say=say)
    program_curve: list[dict[str, Any]] = []
    if curve and programs is not None:
        program_curve = efficiency.program_efficiency(programs["data"], seed=seed, progress=say)
    if programs is None and data["programs"]:
        say("too few measured training programs for a program model")
    summary = {name: {k: s["models"][OURS][k] for k in ("n", "rmspe", "mape", "within5", "within10", "within15")}
               | {"noise_floor_within10": s["noise_floor"]["within10"],
                  "noise_floor_rmspe": s["noise_floor"]["rmspe"],
                  # None when the profile has fewer than 4 rounds: JSON has no NaN
                  "label_floor_within10": s["label_floor"]["within10"] if s["label_floor"]["n"] else None}
               for name, s in sets.items()}
    card = {"profile": str(profile_dir), "device_address": data["device_address"],
            "device_facts": data["device_facts"], "runner": data["runner"], "runner_version":
                data["runner"].get("version"), "training_data_hash": data["fingerprint"], "threads": data["threads"],
            "training_rows": len(training), "holdout_rows": len(holdout), "cv_scores": ours.cv_scores_,
            "metrics": summary, "network": network.get("models", {}).get(OURS, {}),
            "runtime": RUNTIME, "program_runner": data["program_runner"],
            "program_metrics": program_eval.card_metrics(programs), "program_rows": len(data["programs"]),
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    persistence.save(ours, out_dir, card, None if programs is None else programs["model"])
    result = {"card": card, "sets": sets, "network": network, "best_impl": best_impl, "curve": curve_points,
              "programs": programs, "program_curve": program_curve,
              "model": ours.kind_, "cv_scores": ours.cv_scores_, "out_dir": str(out_dir),
              "training_rows": len(training), "holdout_rows": len(holdout), "seconds": time.monotonic() - started}
    say("writing the report")
    from predictor import report  # matplotlib is imported only when a report is written
    plotted = holdout or evaluation.grouped_split(training, 0.2, seed)[1]
    report.write(out_dir, result, evaluation.predict_rows(ours, plotted), evaluation.latencies(plotted),
                 [r["impl"] for r in plotted], "real-network holdout" if holdout else "unseen shapes (refit on all)")
    return result
