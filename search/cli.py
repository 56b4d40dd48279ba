"""`jcw search` (evolutionary search of per-layer width x density against a latency predictor) and
`jcw export` (rebuild, check, save and ExecuTorch-export one candidate of a run)."""
from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

import numpy as np

from .errors import SearchError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "search", help="search per-layer channel width x weight density against a latency predictor",
        description="Multi-objective evolutionary search (NSGA-II with JCW's target-wise selection) over "
                    "per-layer channel width and weight density; latency from a trained predictor, accuracy "
                    "from an estimator. Writes front.json, front.png, budgets.json and run.json to --out.")
    p.add_argument("--predictor", required=True, help="predictor directory written by `jcw train`")
    p.add_argument("--model", required=True,
                   help="zoo model (resnet18, resnet50, mobilenetv1, mobilenetv2, digits) or module:function "
                        "returning a torch.nn.Module")
    p.add_argument("--input-shape", help="example input shape N,C,H,W (required for module:function)")
    p.add_argument("--budgets", default="", help="comma-separated latency budgets in ms for the summary table")
    p.add_argument("--pop", type=int, default=64, help="population size (default 64, as in JCW)")
    p.add_argument("--gens", type=int, default=128, help="generations (default 128, as in JCW)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the search (same seed, same front)")
    p.add_argument("--accuracy", default="proxy",
                   help="accuracy estimator: proxy (data-free, from weights), digits (real accuracy on "
                        "scikit-learn digits; --model digits only) or module:function taking the pruned model")
    p.add_argument("--max-latency", type=float, help="constraint: candidates must take at most this long (ms)")
    p.add_argument("--min-latency", type=float, default=0.0,
                   help="constraint: candidates must take at least this long (ms), to focus on a budget range")
    p.add_argument("--bound", action="append", default=[], metavar="NAME=VALUE",
                   help="lower bound for sensitive layers, repeatable, e.g. --bound first_density=1.0; names: "
                        "min_width, min_density, first_width, first_density, last_density, strided_width, "
                        "strided_density, residual_width")
    p.add_argument("--out", required=True, help="run directory to write")
    p.set_defaults(handler=search_command)

    e = subparsers.add_parser(
        "export", help="export one candidate of a search run to an ExecuTorch .pte and time it",
        description="Rebuild the most accurate candidate within --pick ms as a pruned torch model, check it "
                    "against its layer specs, save it with pruning masks (.pruned.pt) and its layers "
                    "(.layers.jsonl), export it with the XNNPACK partitioner and time it with executorch.runtime.")
    e.add_argument("--run", required=True, help="run directory written by `jcw search`")
    e.add_argument("--pick", type=float, required=True, help="latency budget in ms; the best candidate within it")
    e.add_argument("--out", required=True, help="output .pte path")
    e.add_argument("--reps", type=int, default=20, help="timed runs of the .pte (default 20)")
    e.add_argument("--compare-unpruned", action="store_true",
                   help="also export and time the unpruned network: measured against predicted speed-up")
    e.add_argument("--model", metavar="MODULE:FUNCTION",
                   help="for a run of your own module:function model: name it again to confirm you trust the "
                        "code the run directory points at (it is imported to rebuild the model)")
    e.set_defaults(handler=export_command)


def _budgets(text: str) -> tuple[float, ...]:
    if not text.strip():
        return ()
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = (math.nan,)
    if any(not math.isfinite(v) or v <= 0 for v in values):
        raise SearchError(f"--budgets must be positive numbers of ms separated by commas, got {text!r}")
    return values


def _bounds(items: list[str]):
    from dataclasses import fields

    from .genome import Bounds
    names = {f.name for f in fields(Bounds)}
    values = {}
    for item in items:
        name, _, text = item.partition("=")
        if name not in names:
            raise SearchError(f"--bound {item!r}: the name must be one of {', '.join(sorted(names))}")
        try:
            values[name] = float(text)
        except ValueError:
            raise SearchError(f"--bound {item!r}: the value must be a number in (0, 1]") from None
    return Bounds(**values)


def _load_predictor(path: str):
    if not Path(path).exists():
        raise SearchError(f"predictor {path} does not exist; train one with `jcw train --profile ... --out {path}`")
    import predictor
    return predictor.load(path)


def _accuracy(kind: str, model_name: str, model, space, seed: int, run_dir: Path):
    from . import digits
    from .objectives import ProxyAccuracy, UserAccuracy
    if kind == "proxy":
        return ProxyAccuracy(model, space), model
    if kind == "digits":
        if model_name != "digits":
            raise SearchError("--accuracy digits needs --model digits")
        splits = digits.load_splits(seed)
        digits.train(model, *splits["train"], seed=seed)
        import torch  # deferred: keeps `jcw` start-up fast for the other stages' commands
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), run_dir / "base_model.pt")
        return digits.evaluator(model, space, splits, seed=seed), model
    if ":" in kind:
        return UserAccuracy(kind, model, space), model
    raise SearchError(f"--accuracy must be proxy, digits or module:function, got {kind!r}")


def search_command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from . import zoo
    from .run import (SearchSettings, best_per_budget, build_space, candidates, references, run_search,
                      settings_to_json, write_run)
    console = Console(stderr=True)
    budgets = _budgets(args.budgets)
    if args.max_latency is not None and not (math.isfinite(args.max_latency) and args.max_latency > 0):
        raise SearchError(f"--max-latency must be a positive number of ms, got {args.max_latency}")
    if not (math.isfinite(args.min_latency) and 0 <= args.min_latency < (args.max_latency or math.inf)):
        raise SearchError(f"--min-latency must be >= 0 and below --max-latency, got {args.min_latency}")
    shape = zoo.parse_shape(args.input_shape) if args.input_shape else None
    settings = SearchSettings(pop=args.pop, gens=args.gens, seed=args.seed, budgets=budgets,
                              bounds=_bounds(args.bound),
                              latency_range=None if args.max_latency is None and not args.min_latency
                              else (args.min_latency, args.max_latency))
    if ":" not in args.model and args.model not in zoo.ZOO:
        raise SearchError(f"unknown model {args.model!r}; choose one of {', '.join(zoo.ZOO)} or give module:function")
    if ":" in args.model and shape is None:
        raise SearchError(f"model {args.model} needs --input-shape (e.g. 1,3,224,224)")
    if args.accuracy not in ("proxy", "digits") and ":" not in args.accuracy:
        raise SearchError(f"--accuracy must be proxy, digits or module:function, got {args.accuracy!r}")
    if args.accuracy == "digits" and args.model != "digits":
        raise SearchError("--accuracy digits needs --model digits")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SearchError(f"--out {out} exists and is not a directory")
    latency_predictor = _load_predictor(args.predictor)
    model, shape = zoo.resolve(args.model, shape)
    space = build_space(model, shape, settings)
    try:  # before the search, not after it: a run that cannot be written should not be run
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SearchError(f"cannot create run directory {out}: {exc.strerror or exc}") from None
    accuracy, model = _accuracy(args.accuracy, args.model, model, space, args.seed, out)

    with Progress(TextColumn("search"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("gens", total=settings.gens, info="")

        def tick(gen, result):
            front = result.front
            info = f"front {len(front)}, {result.F[front, 0].min():.3g}-{result.F[front, 0].max():.3g} ms" \
                if len(front) else "no feasible candidate yet"
            progress.update(task, completed=gen, info=info)

        try:
            result, latency, seconds = run_search(space, latency_predictor, accuracy, settings, tick)
        except BaseException:  # the error sentence should stand alone, not under a half-filled bar
            progress.live.transient = True
            if not console.is_terminal:
                console.file = io.StringIO()
            raise
    front = candidates(space, latency, accuracy, result.X[result.front])
    if not front:
        raise SearchError("no candidate satisfies the --min-latency/--max-latency range; widen it")
    refs = references(space, latency, accuracy)
    meta = {"model": args.model, "input_shape": list(shape), "model_seed": 0, "predictor": str(args.predictor),
            "accuracy": args.accuracy, "settings": settings_to_json(settings), "evaluations": result.evaluations,
            "predictor_calls": latency.calls, "wall_s": seconds, "n_layers": space.n_layers,
            "n_genes": space.n_var}
    write_run(out, meta, front, refs, budgets)

    table = Table(title=f"jcw search: {args.model}, {len(front)} candidates on the front, {seconds:.1f} s")
    for col in ("budget ms", "latency ms", "accuracy", "sparse layers", "mean width", "mean density"):
        table.add_column(col, justify="right")
    shown = budgets or tuple(np.quantile([c["latency_ms"] for c in front], [0.25, 0.5, 1.0]).round(3))
    for budget, cand in zip(shown, best_per_budget(front, shown)):
        if cand is None:
            table.add_row(f"{budget:g}", "none fits", "", "", "", "")
            continue
        sparse = sum(layer["impl"] == "sparse" for layer in cand["layers"])
        table.add_row(f"{budget:g}", f"{cand['latency_ms']:.3f}", f"{cand['accuracy']:.4f}",
                      f"{sparse}/{len(cand['layers'])}", f"{np.mean(cand['widths']):.2f}",
                      f"{np.mean(cand['densities']):.2f}")
    base = next((r for r in refs if r["kind"] == "width" and r["value"] == 1.0), None)
    if base:
        table.caption = f"unpruned: {base['latency_ms']:.3f} ms, accuracy {base['accuracy']:.4f}; written to {out}"
    Console().print(table)
    return 0


def export_command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    if not (math.isfinite(args.pick) and args.pick > 0):
        raise SearchError(f"--pick must be a positive number of ms, got {args.pick}")
    if args.reps < 1:
        raise SearchError(f"--reps must be >= 1, got {args.reps}")
    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():  # fail before minutes of export, not after
        raise SearchError(f"cannot write {out}: " + ("it is a directory" if out.is_dir()
                                                      else f"directory {out.parent} does not exist"))
    from .export import export_candidate  # deferred past the checks above: it imports torch
    console = Console(stderr=True)
    with console.status("rebuilding, checking and exporting the candidate"):
        report = export_candidate(args.run, args.pick, args.out, args.reps, args.compare_unpruned, args.model)
    table = Table(title=f"jcw export: candidate {report['candidate']} -> {report['pte']}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("predicted latency (predictor's device)", f"{report['predicted_ms']:.3f} ms")
    table.add_row("measured .pte latency (this machine, median)", f"{report['measured_ms']:.3f} ms")
    table.add_row("measured / predicted", f"{report['measured_ms'] / report['predicted_ms']:.2f}")
    if report.get("unpruned_predicted_ms"):
        measured = report["unpruned_measured_ms"] / report["measured_ms"]
        predicted = report["unpruned_predicted_ms"] / report["predicted_ms"]
        table.add_row("unpruned .pte measured (median)", f"{report['unpruned_measured_ms']:.3f} ms")
        table.add_row("speed-up measured / predicted", f"{measured:.2f}x / {predicted:.2f}x")
    table.add_row("accuracy estimate", f"{report['accuracy']:.4f}")
    table.add_row("max |pte - torch|", f"{report['max_abs_err']:.2e}")
    sparse = report["sparse_layers"]
    table.add_row("layers the predictor runs sparse", f"{len(sparse)}/{report['n_layers']}")
    table.caption = ("ExecuTorch runs every layer dense; the sparse layers (" + ", ".join(sparse[:8])
                     + (" ..." if len(sparse) > 8 else "") + ") are only faster with a sparse kernel."
                     if sparse else "every layer runs dense, as ExecuTorch executes it.")
    Console().print(table)
    return 0
