"""`jcw train` end to end: read a profile, fit the layer predictor and (when the profile has measured
programs) the whole-program model of each runtime (ExecuTorch, and the sparse engine when it has programs
measured there), run the evaluation protocols against the baselines, write the saved
predictor, its card and its report.

With priors (saved predictors of other devices), the closest one by the profile's probe latencies is
chosen and the layer model is a transfer predictor (predictor.transfer), scored beside the prior as it is
and a model trained without it. Returns plain dicts so the CLI, the report and the benchmark all print
the same figures.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone

from jcw.predictor import baselines, efficiency, evaluation, persistence, program_eval, ranges, transfer
from jcw.predictor import priors as prior_predictors
from jcw.predictor.choices import AUTO_STRATEGY
from jcw.predictor.choices import DEFAULT_TRANSFER_STRATEGY as DEFAULT_STRATEGY
from jcw.predictor.errors import PredictorError
from jcw.predictor.features import as_columns, rows_to_columns
from jcw.predictor.models import LatencyPredictor
from jcw.predictor.programs import RUNTIME
from jcw.profiler import engine_plan, labels, plans
from jcw.profiler.store import ProfileStore

Row = Mapping[str, Any]
OURS = "ours"
#: Unfitted estimators; every evaluation fits a clone of each.
BASELINES: dict[str, BaseEstimator] = {
    "macs-proportional": baselines.MacsProportional(),
    "nn-meter-rf": baselines.NnMeterForest(),
    "jcw-interpolation": baselines.JcwInterpolation(),
}
#: The comparisons a transfer predictor is scored beside.
PRIOR_AS_IS = "prior as is"
NO_PRIOR = "no prior"
DECLINED = "transfer (declined)"
#: A prior is declined when, on the new device's own layers held out by shape, a model without it is within
#: ±10 % on this many points more than the best strategy (mean of PRIOR_CHECK_SPLITS splits): a device too
#: unlike the prior's.
PRIOR_MARGIN, PRIOR_CHECK_SPLITS = 5.0, 3
#: `--strategy auto`'s candidates, in order of preference among equals (the default first).
TRANSFER_ORDER = (DEFAULT_STRATEGY, *(name for name in transfer.STRATEGIES if name != DEFAULT_STRATEGY))
STABLE_SET = "holdout, rounds agree ±5%"
#: Layers of architectures no plan is drawn from (profile sample "unseen"; profiles before plan version 2 have none).
UNSEEN_SET = "unseen-architecture holdout"
SETS = ("random split", "unseen shapes", "real-network holdout", STABLE_SET, UNSEEN_SET)


def read_profile(directory: str | Path, threads: int | None = None) -> dict[str, Any]:
    """Rows of a profile split into training and held-out, with the facts a card needs and the training
    configurations counted as measured, failed (only runner errors) and not measured yet."""
    # Read-only: training never writes, and a profile on a read-only medium or shared by others must open.
    with ProfileStore(directory, readonly=True) as store:  # StoreError is already one sentence
        rows = store.measurements()
        plan, errors = store.plan(), store.errors()
        transfer_priors = store.get_meta("transfer_priors")
        program_rows = store.program_measurements() if hasattr(store, "program_measurements") else []
        info = {"device_facts": store.get_meta("device_facts") or {}, "runner": store.get_meta("runner") or {},
                "device_address": store.get_meta("device_address"), "fingerprint": store.fingerprint(),
                "program_runner": store.get_meta("program_runner"), "runtime": store.get_meta("runtime", RUNTIME),
                "labels": labels.describe(store)}  # weights mode and settle rounds: how the labels were made
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
    training = [r for r in rows if r["sample"] not in plans.HELD_OUT_SAMPLES]
    holdout = [r for r in rows if r["sample"] == "holdout"]
    unseen = [r for r in rows if r["sample"] == "unseen"]
    counted = _count_training(plan, errors, training, threads)
    if len(training) < 8:
        raise PredictorError(_too_few(directory, counted))
    layer_threads = threads if threads is not None else (counts[0] if counts else None)
    runtimes = program_eval.by_runtime(program_rows)
    threads = layer_threads if layer_threads is not None else meta_threads
    return {**info, "training": training, "holdout": holdout, "unseen": unseen, "threads": threads,
            "programs": program_eval.check_threads(runtimes["executorch"], layer_threads),
            "sparse_programs": program_eval.check_threads(runtimes["sparse"], layer_threads),
            "counts": counted, "transfer_priors": transfer_priors}


def _count_training(plan: Sequence[Row], errors: Sequence[Row], training: Sequence[Row], threads: int | None
                    ) -> dict[str, Any]:
    """Planned training configurations: measured (a good round), failed (runner errors only: the layer's own,
    stored as final) and missing (no result yet), with one error text to quote."""
    def wanted(row: Row) -> bool:
        return row["sample"] not in plans.HELD_OUT_SAMPLES and (threads is None or row["threads"] == threads)
    planned = {r["config_id"] for r in plan if wanted(r)}
    measured = {r["config_id"] for r in training} & planned
    failed_rounds = [e for e in errors if wanted(e) and e["config_id"] in planned - measured]
    failed = {e["config_id"] for e in failed_rounds}
    return {"planned": len(planned), "measured": len(measured), "failed": len(failed),
            "missing": len(planned - measured - failed),
            "error": " ".join(str(failed_rounds[0]["error"]).split())[:100] if failed_rounds else None}


def _too_few(directory: str | Path, counted: Mapping[str, Any]) -> str:
    text = f"profile {directory} has only {counted['measured']} measured training configurations"
    if counted["failed"]:
        return (f"{text}: {counted['failed']} failed with a runner error (such as {counted['error']!r}) and "
                f"{counted['missing']} are not measured yet; fix what the runner reports and rerun `jcw profile`")
    if counted["missing"]:
        return (f"{text} and {counted['missing']} are not measured yet; rerun `jcw profile` to finish it, or "
                "profile with a larger --budget")
    return f"{text}; profile with a larger --budget first"


def _transfer_hint(data: Mapping[str, Any], priors: Sequence[Path]) -> str | None:
    """A profile planned by `jcw profile --prior` but trained without one: say how to use it."""
    planned = data.get("transfer_priors") or []
    if priors or not planned:
        return None
    paths = " ".join(f"--prior {entry.get('path')}" for entry in planned if isinstance(entry, dict))
    return f"this profile was planned for transfer; train with {paths} to use the known device's predictor"


class PriorAsIs(BaseEstimator):
    """The prior's own predictions, unadapted: the comparison that shows what the new data adds."""

    def __init__(self, prior: prior_predictors.Prior | None = None) -> None:
        self.prior = prior

    def fit(self, rows: Sequence[Row], y: None = None) -> PriorAsIs:
        if not callable(getattr(getattr(self.prior, "model", None), "predict_impl", None)):
            raise PredictorError(f"parameter 'prior' must be a loaded prior, got {type(self.prior).__name__}")
        return self

    def predict_impl(self, columns: Mapping[str, np.ndarray], impl: str) -> np.ndarray:
        return self.prior.model.predict_impl(columns, impl)


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


def fit_all(training: Sequence[Row], params: Mapping[str, Any],
            lineup: Mapping[str, BaseEstimator] | None = None) -> dict[str, Any]:
    """A fitted clone of every estimator of the lineup (default: ours, a LatencyPredictor with `params`, and
    the baselines)."""
    lineup = lineup or {OURS: LatencyPredictor(**params), **BASELINES}
    return {name: clone(model).fit(training) for name, model in lineup.items()}


def evaluate(training: Sequence[Row], holdout: Sequence[Row], params: Mapping[str, Any], seed: int = 0,
             say: Callable[[str], None] = lambda message: None,
             lineup: Mapping[str, BaseEstimator] | None = None, unseen: Sequence[Row] = ()) -> dict[str, Any]:
    """Ours and every baseline on the held-out sets and at network level, at one training budget; the
    unseen-architecture layers, when given, also by layer kind (ours only)."""
    sets: dict[str, dict[str, Any]] = {}
    for name, split in (("random split", evaluation.random_split), ("unseen shapes", evaluation.grouped_split)):
        say(f"evaluating on the {name}")
        train_rows, test_rows = split(training, 0.2, seed)
        sets[name] = scored(fit_all(train_rows, params, lineup), test_rows)
    say("fitting on all training data")
    final = fit_all(training, params, lineup)
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
    unseen_kinds: dict[str, Any] = {}
    if unseen:
        say("evaluating on the unseen-architecture holdout")
        sets[UNSEEN_SET] = scored(final, unseen)
        unseen_kinds = {kind: scored({OURS: final[OURS]}, rows) for kind, rows in evaluation.by_kind(unseen).items()}
    return {"final": final, "sets": sets, "network": network, "best_impl": best_impl, "unseen_kinds": unseen_kinds}


def choose_transfer(prior: Any, own: BaseEstimator, training: Sequence[Row], strategies: Sequence[str],
                    seed: int = 0) -> tuple[str, dict[str, float], str | None]:
    """Which transfer strategy to use on this device: each of `strategies` built on `prior`, and `own` (a model
    without the prior), fitted on the new device's training layers but a share held out by shape and scored on
    that share (PRIOR_CHECK_SPLITS splits; never the real-network holdout). Returns the best strategy, the
    mean share within ±10 % of every candidate, and None — or why in one sentence the prior is declined, when
    the model without it beats the best strategy by more than PRIOR_MARGIN points. Ties go to the earlier
    strategy (`strategies` in order of preference)."""
    candidates = {name: transfer.TransferPredictor(prior, name, random_state=seed) for name in strategies}
    candidates[NO_PRIOR] = own
    shares: dict[str, list[float]] = {name: [] for name in candidates}
    for split in range(PRIOR_CHECK_SPLITS):
        fit_rows, test_rows = evaluation.grouped_split(training, 0.2, seed + split)
        scores = evaluate_models({name: clone(model).fit(fit_rows) for name, model in candidates.items()}, test_rows)
        for name, metrics in scores.items():
            shares[name].append(100.0 * metrics["within10"])
    means = {name: round(float(np.mean(values)), 1) for name, values in shares.items()}
    best = max(strategies, key=lambda name: (means[name], -list(strategies).index(name)))
    if means[NO_PRIOR] <= means[best] + PRIOR_MARGIN:
        return best, means, None
    return best, means, (f"on the new device's own layers held out by shape, a model without the prior was within "
                         f"±10 % on {means[NO_PRIOR]:.1f} % of them against {means[best]:.1f} % with it (best "
                         f"strategy {best}), so the prior's device is too unlike this one and the predictor is "
                         "trained without it")


def train(profile_dir: str | Path, out_dir: str | Path, *, model: str = "auto", threads: int | None = None,
          seed: int = 0, curve: bool = False, curve_budgets: Sequence[int] = efficiency.DEFAULT_BUDGETS,
          priors: Sequence[str | Path] = (), strategy: str = AUTO_STRATEGY,
          progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fit, evaluate (three held-out sets, network level, baselines, optional curve), save, report.

    With `priors`, the closest is chosen by the profile's measured layers and ours is a transfer
    predictor built on it (`strategy`, see predictor.transfer.STRATEGIES, or "auto": the best of them on the
    profile's own layers held out by shape), unless no prior does better there (choose_transfer).
    """
    say = progress or (lambda message: None)
    started = time.monotonic()
    priors = list(dict.fromkeys(Path(p) for p in priors))
    for prior in priors:
        if prior.resolve() == Path(out_dir).resolve():
            raise PredictorError(f"--out {out_dir} is the --prior itself; write the new predictor to another directory")
    data = read_profile(profile_dir, threads)
    training, holdout = data["training"], data["holdout"]
    params = {"model": model, "random_state": seed}
    LatencyPredictor(**params)._validate_params()
    chosen, lineup, prior_card, declined = None, None, None, None
    if priors:
        say("reading the priors")
        loaded = [prior_predictors.load_prior(p, data["runner"].get("version")) for p in priors]
        chosen, candidates = prior_predictors.choose_prior(loaded, training)
        transfer.TransferPredictor(chosen, DEFAULT_STRATEGY if strategy == AUTO_STRATEGY else strategy,
                                   random_state=seed)._validate_params()
        say("scoring the transfer on this profile's own layers")
        strategies = TRANSFER_ORDER if strategy == AUTO_STRATEGY else (strategy,)
        best, scores, why = choose_transfer(chosen, LatencyPredictor(**params), training, strategies, seed)
        prior_card = {"strategy": best, "asked": strategy, "strategy_scores": scores, "candidates": candidates}
        transferred = transfer.TransferPredictor(chosen, best, random_state=seed)
        if why is None:
            lineup = {OURS: transferred, PRIOR_AS_IS: PriorAsIs(chosen), NO_PRIOR: LatencyPredictor(**params),
                      **BASELINES}
        else:
            say(why)
            declined = {**prior_card, **chosen.describe(), "why": why}
            lineup = {OURS: LatencyPredictor(**params), PRIOR_AS_IS: PriorAsIs(chosen), DECLINED: transferred,
                      **BASELINES}
            chosen, prior_card = None, None

    evaluated = evaluate(training, holdout, params, seed, say, lineup, unseen=data["unseen"])
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
    sparse = program_eval.evaluate_programs(
        ours, data["sparse_programs"], seed=seed, say=say, runtime="sparse",
        xnnpack_sparse_inference=engine_plan.xnnpack_sparse_inference(data["program_runner"]))
    summary = {name: {k: s["models"][OURS][k] for k in ("n", "rmspe", "mape", "within5", "within10", "within15")}
               | {"noise_floor_within10": s["noise_floor"]["within10"],
                  "noise_floor_rmspe": s["noise_floor"]["rmspe"],
                  # None when the profile has fewer than 4 rounds: JSON has no NaN
                  "label_floor_within10": s["label_floor"]["within10"] if s["label_floor"]["n"] else None}
               for name, s in sets.items()}
    card = {"profile": str(profile_dir), "device_address": data["device_address"],
            "device_facts": data["device_facts"], "runner": data["runner"], "runner_version":
                data["runner"].get("version"), "training_data_hash": data["fingerprint"], "threads": data["threads"],
            "training_rows": len(training), "holdout_rows": len(holdout), "unseen_rows": len(data["unseen"]),
            "cv_scores": ours.cv_scores_,
            "metrics": summary, "network": network.get("models", {}).get(OURS, {}),
            "runtime": RUNTIME, "program_runner": data["program_runner"], "labels": data["labels"],
            "program_metrics": program_eval.card_metrics(programs), "program_rows": len(data["programs"]),
            "sparse_program_metrics": program_eval.card_metrics(sparse),
            "sparse_program_rows": len(data["sparse_programs"]),
            "training_ranges": ranges.union(ranges.training_ranges(as_columns(rows_to_columns(list(training)))),
                                            chosen.loaded.card.get("training_ranges") if chosen else None),
            "prior": None if chosen is None else {**prior_card, **chosen.describe()},
            "prior_declined": declined,
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    persistence.save(ours, out_dir, card, None if programs is None else programs["model"],
                     None if sparse is None else sparse["model"])
    result = {"card": card, "sets": sets, "network": network, "best_impl": best_impl, "curve": curve_points,
              "programs": programs, "program_curve": program_curve, "sparse_programs": sparse,
              "model": ours.kind_, "cv_scores": ours.cv_scores_, "out_dir": str(out_dir),
              "counts": data["counts"], "prior": card["prior"], "prior_declined": declined,
              "hint": _transfer_hint(data, priors),
              "training_rows": len(training), "holdout_rows": len(holdout), "unseen_rows": len(data["unseen"]),
              "unseen_kinds": evaluated["unseen_kinds"], "seconds": time.monotonic() - started}
    say("writing the report")
    from jcw.predictor import report  # matplotlib is imported only when a report is written
    plotted = holdout or evaluation.grouped_split(training, 0.2, seed)[1]
    report.write(out_dir, result, evaluation.predict_rows(ours, plotted), evaluation.latencies(plotted),
                 [r["impl"] for r in plotted], "real-network holdout" if holdout else "unseen shapes (refit on all)")
    return result
