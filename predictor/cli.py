"""`jcw train` and `jcw predict`: the predictor stage's subcommands, registered on the `jcw` dispatcher.

Each handler returns an exit status; bad input raises PredictorError (one sentence, no traceback).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from jcw.predictor.choices import AUTO_STRATEGY, MODEL_KINDS, TRANSFER_STRATEGIES
from jcw.predictor.errors import PredictorError
from jcw.profiler.cliargs import check_output_dir, int_at_least

#: Extrapolated layers named in the table's warning line before "and N more".
_NAMED_EXTRAPOLATED = 5


def _budgets(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated layer counts, got {text!r}") from None
    if not values or any(v < 8 for v in values):
        raise argparse.ArgumentTypeError(f"every budget must be at least 8 layers, got {text!r}")
    return sorted(set(values))


_non_negative = int_at_least(0)
_positive = int_at_least(1)


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train", help="learn a latency predictor from a profile and report its accuracy",
        description="Fit per-layer latency models (dense and sparse kernels) on a profile's training layers, "
                    "pick the model family by grouped cross-validation, score it and the baselines "
                    "(MACs-proportional, nn-Meter-style forest, JCW-style interpolation) on a random split, an "
                    "unseen-shape split and the profile's held-out real-network layers; when the profile holds "
                    "measured whole programs, fit the whole-program latency model (runtime executorch) on its "
                    "training programs and score it on held-out genomes and unseen architectures next to the old "
                    "sum-of-convolutions prediction; save the predictor with card.json and report.md. With --prior, "
                    "transfer from a known device: the closest prior by this profile's measured layers is adapted "
                    "to them (--strategy) and scored beside the prior as it is and a model trained without it; the "
                    "card records the prior's SHA-256 and the predictor carries a copy of it.")
    train.add_argument("--profile", required=True, metavar="DIR", help="profile directory from `jcw profile`")
    train.add_argument("--out", required=True, metavar="DIR", help="predictor directory to write, e.g. predictors/x")
    train.add_argument("--model", default="auto", choices=("auto", *MODEL_KINDS),
                       help="model family (default auto: chosen by grouped cross-validation)")
    train.add_argument("--threads", type=_positive, default=None,
                       help="use the measurements at this runner thread count (needed if the profile has several)")
    train.add_argument("--seed", type=_non_negative, default=0, help="seed of splits and models (default 0)")
    train.add_argument("--prior", action="append", default=[], metavar="PREDICTOR_DIR",
                       help="a known device's predictor to transfer from (repeat for several: the closest by this "
                            "profile's measured layers is used); best with a profile from `jcw profile --prior`")
    train.add_argument("--strategy", choices=(AUTO_STRATEGY, *TRANSFER_STRATEGIES), default=AUTO_STRATEGY,
                       help="with --prior: scale (per-operator rescaling of the prior), residual (rescaling plus "
                            "small trees per operator on what is left), feature (the new device's own model with "
                            "the prior's prediction as a feature), or auto (default): each of them, and a model "
                            "without the prior, scored on this profile's own layers held out by shape, and the best "
                            "used; a prior that loses to no prior by more than 5 points is declined")
    train.add_argument("--curve", action="store_true",
                       help="also compute the sample-efficiency curves: layers (random vs adaptive; takes minutes) "
                            "and training programs (10-120, several draws each)")
    train.add_argument("--curve-budgets", type=_budgets, default=None, metavar="N,N,...",
                       help="layer counts of the curve (default 100,200,400,800,1600, those the profile holds)")
    train.set_defaults(handler=cmd_train)

    predict = subparsers.add_parser(
        "predict", help="predict layer latencies (dense, sparse, best) or whole-program latencies",
        description="--layers: predict each layer's latency with the dense and the sparse kernel and pick the "
                    "faster; one JSON line per layer with --json: {id, dense_ms, sparse_ms (null for dwconv), "
                    "best_impl, best_ms, extrapolated}; extrapolated is true for a layer outside the ranges the "
                    "predictor was trained on (null when its card predates them); the id is the line's \"id\" or "
                    "its line number. --programs: predict the "
                    "latency of whole ExecuTorch programs (program specs, one per line) on the runtime "
                    "\"executorch\", or with --runtime sparse on the kit's sparse network engine; one JSON line per "
                    "program with --json: {id, name, runtime, latency_ms, conv_ms, other_ms, model} (sparse adds "
                    "sparse_layers and conversions).")
    predict.add_argument("--predictor", required=True, metavar="DIR", help="predictor directory from `jcw train`")
    what = predict.add_mutually_exclusive_group(required=True)
    what.add_argument("--layers", metavar="FILE", help="layer specs, one JSON object per line")
    what.add_argument("--programs", metavar="FILE", help="program specs (jcw-program), one JSON object per line")
    predict.add_argument("--runtime", choices=("executorch", "sparse"), default="executorch",
                         help="with --programs: the runtime whose whole-program latency to predict (default "
                              "executorch, the .pte; sparse: the kit's network engine, which runs every weight-pruned "
                              "groups-1 convolution sparse)")
    predict.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    predict.set_defaults(handler=cmd_predict)


def _pct(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def cmd_train(args: argparse.Namespace) -> int:
    from jcw.predictor import efficiency, pipeline, report
    from jcw.profiler import labels

    check_output_dir(args.out, "--out")  # before minutes of training, not after them
    console = Console(stderr=True)
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("reading the profile", total=None)
        result = pipeline.train(args.profile, args.out, model=args.model, threads=args.threads, seed=args.seed,
                                curve=args.curve, curve_budgets=args.curve_budgets or efficiency.DEFAULT_BUDGETS,
                                priors=args.prior, strategy=args.strategy,
                                progress=lambda message: progress.update(task, description=message))
    # Piped output (logs, CI) would otherwise be cut to 80 columns and truncate the figures.
    out = Console() if sys.stdout.isatty() else Console(width=140)
    table = Table(title=f"held-out accuracy (model: {result['model']})")
    for column in report.METRIC_HEADER:
        table.add_column(column, justify="left" if column in ("held-out set", "model") else "right",
                         no_wrap=column in ("held-out set", "model"))
    for row in report.metrics_rows(result["sets"]):
        table.add_row(*row, style="dim" if row[1].endswith("floor") else None)
    table.caption = ("noise floor: timing round 2 against round 1; label floor: fastest of odd rounds against "
                     "fastest of even rounds; " + labels.sentence(result["card"].get("labels")))
    out.print(table)
    if result["network"]:
        net = Table(title="network level (sum of faster kernel per layer)")
        for column in report.NETWORK_HEADER:
            net.add_column(column, justify="left" if column == "model" else "right", no_wrap=column == "model")
        for row in report.network_rows(result["network"], result["best_impl"]):
            net.add_row(*row)
        out.print(net)
    programs = result["programs"]
    if programs is not None:
        out.print(_program_table(programs, f"whole-program latency on ExecuTorch (threads "
                                           f"{result['card'].get('threads')})",
                                 "holdout: zoo architectures at genomes never trained on; unseen: architectures no "
                                 "plan drew from; baseline: what the kit reported before (sum of the faster conv "
                                 "kernel)"))
    sparse = result.get("sparse_programs")
    if sparse is not None:
        out.print(_program_table(sparse, f"whole-program latency on the sparse engine (threads "
                                         f"{result['card'].get('threads')})",
                                 "holdout: ResNet-18/50, MobileNetV1/V2 at genomes and densities never trained on; "
                                 "baseline: the old anchor (sum of the faster kernel per layer)"))
    if result["program_curve"]:
        curve = Table(title="program sample efficiency (mean over draws)")
        for column in efficiency.PROGRAM_HEADER:
            curve.add_column(column, justify="right")
        for row in efficiency.program_table(result["program_curve"]):
            curve.add_row(*row)
        out.print(curve)
    if result["curve"]:
        curve = Table(title="sample efficiency (real-network holdout)")
        for column in ("layers", "arm", "configurations", "model", "±10% (%)", "RMSPE (%)"):
            curve.add_column(column)
        for row in efficiency.as_table(result["curve"]):
            curve.add_row(*row)
        out.print(curve)
    if result["prior"] and len(result["prior"]["candidates"]) > 1:
        out.print(_prior_table(result["prior"]))
    summary = Table(show_header=False, title="summary")
    summary.add_row("training / held-out configurations", f"{result['training_rows']} / {result['holdout_rows']} "
                    f"real-network / {result.get('unseen_rows', 0)} unseen-architecture")
    counts = result["counts"]
    summary.add_row("training configurations planned", f"{counts['planned']}: {counts['measured']} measured, "
                    f"{counts['failed']} failed (runner errors), {counts['missing']} not measured yet")
    if result["prior"]:
        prior = result["prior"]
        summary.add_row("prior", f"{prior['path']} (sha256 {prior['sha256'][:16]}…, {prior['device_address']}, "
                                 f"threads {prior['threads']}), strategy {prior['strategy']}"
                                 + (" (auto: " + ", ".join(f"{name} {share:.1f}%" for name, share in
                                                           prior["strategy_scores"].items()) + " within ±10% on "
                                    "held-out shapes)" if prior.get("asked") == AUTO_STRATEGY else ""))
    else:
        declined = result.get("prior_declined")
        if declined:
            summary.add_row("prior (declined)", f"{declined['path']}: {declined['why']}")
        summary.add_row("model (grouped-CV ±10% share)", f"{result['model']} (" + ", ".join(
            f"{k} {_pct(v)}" for k, v in result["cv_scores"].items()) + ")")
    if programs is not None:
        model = programs["model"]
        summary.add_row("whole-program model", f"{model.kind_} on {programs['counts']['train']} training programs")
    else:
        summary.add_row("whole-program model", "none (the profile has too few measured programs): whole programs "
                                               "are predicted as the sum of their dense layers")
    summary.add_row("sparse-engine program model", "none (the profile has too few sparse-engine programs): the sum "
                    "of the layers as the engine runs them" if sparse is None else
                    f"{sparse['model'].kind_} on {sparse['counts']['train']} training programs")
    summary.add_row("predictor", result["out_dir"])
    summary.add_row("report", f"{result['out_dir']}/report.md")
    summary.add_row("time", f"{result['seconds']:.1f} s")
    out.print(summary)
    if result["hint"]:
        out.print(f"note: {result['hint']}")
    return 0


def _program_table(evaluated: dict[str, Any], title: str, caption: str) -> Table:
    """One runtime's whole-program accuracy: per set, ours, the references and the label floor."""
    from jcw.predictor import program_eval
    table = Table(title=title)
    for column in program_eval.HEADER:
        table.add_column(column, justify="left" if column in ("programs", "predictor") else "right",
                         no_wrap=column in ("programs", "predictor"))
    for row in program_eval.rows_table(evaluated):
        table.add_row(*row, style="dim" if row[1] == program_eval.LABEL_FLOOR else None)
    table.caption = caption
    return table


def _prior_table(prior: dict[str, Any]) -> Table:
    """The priors tried and how close each is to this device (the chosen one has the smallest rescaled error)."""
    table = Table(title="closest prior by this profile's measured layers")
    for column in ("prior", "sha256", "median |err| as is", "after rescaling", "±10% after rescaling", "chosen"):
        table.add_column(column, justify="left" if column in ("prior", "sha256") else "right")
    for c in prior["candidates"]:
        table.add_row(c["path"], c["sha256"][:16] + "…", _pct(c["as_is"]), _pct(c["rescaled"]),
                      _pct(c["rescaled_within10"]), "yes" if c["chosen"] else "")
    return table


def _number(value: float) -> float | None:
    return None if not math.isfinite(value) else round(float(value), 6)


def cmd_predict(args: argparse.Namespace) -> int:
    from jcw import predictor
    from jcw.profiler.layerspec import LayerBatch, read_jsonl

    model = predictor.load(args.predictor)
    if args.programs:
        return _predict_programs(model, args)
    if args.runtime != "executorch":
        raise PredictorError("--runtime applies to --programs; --layers predicts each layer's dense and sparse kernel")
    entries = read_jsonl(args.layers)
    ids, number = [], 0
    for obj, _ in entries:
        number += 1
        ids.append(str(obj["id"]) if isinstance(obj, dict) and "id" in obj else str(number))
    columns = LayerBatch.from_specs([spec for _, spec in entries])
    out = model.predict(columns)
    outside = model.extrapolated(columns)
    records: list[dict[str, Any]] = [
        {"id": ids[i], "dense_ms": _number(out["dense_ms"][i]), "sparse_ms": _number(out["sparse_ms"][i]),
         "best_impl": out["best_impl"][i], "best_ms": _number(out["best_ms"][i]),
         "extrapolated": None if outside is None else bool(outside[i])} for i in range(len(ids))]
    if args.json:
        for record in records:
            sys.stdout.write(json.dumps(record) + "\n")
        return 0
    table = Table(title=f"predicted latency ({args.predictor}, model {model.card.get('model')})")
    for column in ("id", "dense ms", "sparse ms", "best", "best ms"):
        table.add_column(column, justify="left" if column in ("id", "best") else "right")
    for r in records:
        table.add_row(r["id"], f"{r['dense_ms']:.4f}", "-" if r["sparse_ms"] is None else f"{r['sparse_ms']:.4f}",
                      r["best_impl"], f"{r['best_ms']:.4f}")
    console = Console()
    console.print(table)
    total = sum(r["best_ms"] for r in records)
    console.print(f"{len(records)} layers, total {total:.3f} ms with the faster kernel per layer "
                  f"({sum(r['best_impl'] == 'sparse' for r in records)} sparse)")
    flagged = [r["id"] for r in records if r["extrapolated"]]
    if flagged:
        named = ", ".join(flagged[:_NAMED_EXTRAPOLATED]) + (
            f" and {len(flagged) - _NAMED_EXTRAPOLATED} more" if len(flagged) > _NAMED_EXTRAPOLATED else "")
        console.print(f"warning: {len(flagged)} of {len(records)} layers lie outside the ranges this predictor was "
                      f"trained on (extrapolated, treat their latency as a rough guess): {named}", soft_wrap=True)
    return 0


def _read_programs(path: str) -> list[tuple[str, Any]]:
    """(id, spec) per non-blank line of a program-spec JSON Lines file; the id is "id", else the name or line."""
    from jcw.profiler.layerspec import LayerSpecError, iter_jsonl
    entries = []
    try:
        for number, spec in iter_jsonl(path, what="program"):
            if not isinstance(spec, dict):
                raise PredictorError(f"{path} line {number} is not a program spec (a JSON object)")
            label = spec.pop("id", None)
            entries.append((str(label if label is not None else spec.get("name", number)), spec))
    except LayerSpecError as exc:  # unreadable file or a line that is not JSON: already one sentence
        raise PredictorError(str(exc)) from None
    if not entries:
        raise PredictorError(f"{path} holds no program specs")
    return entries


def _predict_programs(model: Any, args: argparse.Namespace) -> int:
    entries = _read_programs(args.programs)
    sparse = args.runtime == "sparse"
    try:
        out = model.predict_programs([spec for _, spec in entries], runtime=args.runtime)
    except PredictorError as exc:
        raise PredictorError(f"{args.programs}: {exc}") from None
    fitted = model.sparse_program_model if sparse else model.program_model
    how = "program model" if fitted is not None else (
        "sum of layers as the engine runs them" if sparse else "sum of dense layers")
    records = [{"id": label, "name": spec.get("name"), "runtime": args.runtime,
                "latency_ms": _number(out["latency_ms"][i]), "conv_ms": _number(out["conv_ms"][i]),
                "other_ms": _number(out["other_ms"][i]), "model": how,
                **({"sparse_layers": int(out["sparse_layers"][i]), "conversions": int(out["conversions"][i])}
                   if sparse else {})}
               for i, (label, spec) in enumerate(entries)]
    if args.json:
        for record in records:
            sys.stdout.write(json.dumps(record) + "\n")
        return 0
    threads = model.card.get("threads")
    where = "the sparse engine" if sparse else "ExecuTorch"
    table = Table(title=f"predicted whole-program latency on {where} ({args.predictor}, threads {threads})")
    for column in ("id", "latency ms", "conv ms", "other ms") + (("sparse layers", "conversions") if sparse else ()):
        table.add_column(column, justify="left" if column == "id" else "right")
    for r in records:
        table.add_row(r["id"], f"{r['latency_ms']:.3f}", f"{r['conv_ms']:.3f}", f"{r['other_ms']:.3f}",
                      *((str(r["sparse_layers"]), str(r["conversions"])) if sparse else ()))
    console = Console()
    console.print(table)
    console.print(f"{len(records)} programs; whole-program latency from "
                  f"{model.sparse_program_note if sparse else model.program_note}")
    return 0


__all__ = ["register", "PredictorError"]
