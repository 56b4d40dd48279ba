"""`jcw search` (evolutionary search of per-layer width x density against a latency predictor) and
`jcw export` (rebuild, check, save and ExecuTorch-export one candidate of a run)."""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import signal
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from jcw.profiler.cliargs import check_output_dir, os_error_reason, short_path

from .errors import SearchError
from .export_cli import export_command


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "search", help="search per-layer channel width (x weight density) against a latency predictor",
        description="Multi-objective evolutionary search (pymoo's NSGA-II with JCW's target-wise selection, or "
                    "another pymoo algorithm with --algorithm) over "
                    "per-layer channel width (and, with --runtime sparse, weight density); latency from a trained "
                    "predictor for one runtime, accuracy from an estimator. Writes front.json, front.png, "
                    "budgets.json, programs.jsonl and run.json to --out.")
    p.add_argument("--predictor", required=True, help="predictor directory written by `jcw train`")
    p.add_argument("--model", required=True,
                   help="zoo model (resnet18, resnet50, mobilenet_v1, mobilenet_v2, digits) or module:function "
                        "returning a torch.nn.Module")
    p.add_argument("--input-shape", help="example input shape N,C,H,W (required for module:function; at most "
                                         "256 MB of float32, e.g. 1,3,224,224)")
    p.add_argument("--runtime", default="executorch", choices=("executorch", "sparse"),
                   help="what the latency objective is: executorch (default) = the whole exported .pte as "
                        "ExecuTorch runs it, every layer dense, so the genome is per-group width only; sparse = "
                        "the whole network on the kit's sparse engine (the .jcwnet `jcw export` writes), which runs "
                        "every groups-1 convolution with density < 1 sparse, with a density gene per such "
                        "convolution; every candidate carries both runtimes' latencies")
    p.add_argument("--no-density", action="store_true",
                   help="with --runtime sparse: no density genes, a width-only search (every layer then runs dense "
                        "on the engine)")
    p.add_argument("--no-width", action="store_true",
                   help="with --runtime sparse: every channel group keeps its full width, a density-only search")
    p.add_argument("--budgets", default="", help="comma-separated latency budgets in ms for the summary table")
    p.add_argument("--pop", type=int, default=64,
                   help="population size (default 64, as in JCW; at most what fits the search's 2 GB memory cap, "
                        "about 9000)")
    p.add_argument("--gens", type=int, default=128, help="generations (default 128, as in JCW)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the search (same seed, same front)")
    p.add_argument("--algorithm", default="nsga2", metavar="NAME",
                   help="the pymoo algorithm: nsga2 (default: NSGA-II with JCW's target-wise selection), "
                        "nsga2-crowding (NSGA-II with pymoo's rank-and-crowding survival), nsga3, smsemoa or "
                        "spea2; all share the genes, the first population and the operators; run.json records it")
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
        "export", help="export one candidate of a search run (or a uniformly pruned zoo model) to an ExecuTorch "
                       ".pte, and for the sparse runtime a .jcwnet, and measure it on the device",
        description="Rebuild the most accurate candidate within --pick ms as a pruned torch model, check it "
                    "against its layer specs, save it with pruning masks (.pruned.pt), its layers (.layers.jsonl) "
                    "and its program spec (.program.json), export it with the XNNPACK partitioner, check the "
                    ".pte's output, and measure it on the predictor's device with the native ExecuTorch runner at "
                    "the predictor's thread count: measured against predicted, both latency_ms = us_min of the "
                    "fastest round. The report is also written to .export.json. Under runtime sparse (the run's "
                    "runtime unless --runtime says otherwise) it also writes <out>.jcwnet, the network file the "
                    "sparse engine runs (its sparse layers are the candidate's weight-pruned convolutions), and "
                    "measures it the same way; the .pte stays the dense deployment. Without a run, --model M "
                    "--uniform width=W,density=D exports a uniformly pruned zoo model instead.")
    e.add_argument("--run", help="run directory written by `jcw search`")
    e.add_argument("--pick", type=float, help="with --run: latency budget in ms; the best candidate within it")
    e.add_argument("--uniform", metavar="width=W,density=D",
                   help="instead of --run: prune the zoo model --model uniformly, every free channel group to "
                        "width W and every groups == 1 convolution but the stem to weight density D (each in "
                        "(0, 1], default 1), by magnitude as the search prunes; measured only with --device")
    e.add_argument("--runtime", choices=("executorch", "sparse"),
                   help="executorch: write the .pte only; sparse: also the .jcwnet (default: the run's runtime; "
                        "executorch with --uniform)")
    e.add_argument("--out", required=True, help="output .pte path (a .jcwnet goes beside it)")
    e.add_argument("--device", help="where to measure the .pte: local, <usb serial>, tcp:HOST:PORT, or host "
                                    "(this machine through executorch.runtime in Python, a fallback); default: "
                                    "the predictor's device recorded in the run")
    e.add_argument("--rounds", type=int, default=1, help="timing rounds on the device; the fastest counts (default 1)")
    e.add_argument("--reps", type=int, default=20, help="timed runs with --device host (default 20)")
    e.add_argument("--json", action="store_true", help="print the report as one JSON object instead of a table")
    e.add_argument("--compare-unpruned", action="store_true",
                   help="also export and measure the unpruned network: measured against predicted speed-up")
    e.add_argument("--model", metavar="MODEL",
                   help="with --uniform: the zoo model to prune; with --run of your own module:function model: "
                        "name it again to confirm you trust the code the run directory points at (it is imported "
                        "to rebuild the model)")
    e.add_argument("--threads", type=int, help="with --uniform --device: threads to measure with (default: the "
                                               "runtime's default on that device)")
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
    from jcw import predictor

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

    from . import zoo
    from .run import (
        SearchInterrupted,
        SearchSettings,
        build_space,
        candidates,
        check_input_shape,
        program_records,
        references,
        run_meta,
        run_search,
        settings_to_json,
    )
    console = Console(stderr=True)
    budgets = _budgets(args.budgets)
    if args.max_latency is not None and not (math.isfinite(args.max_latency) and args.max_latency > 0):
        raise SearchError(f"--max-latency must be a positive number of ms, got {args.max_latency}")
    if not (math.isfinite(args.min_latency) and 0 <= args.min_latency < (args.max_latency or math.inf)):
        raise SearchError(f"--min-latency must be >= 0 and below --max-latency, got {args.min_latency}")
    shape = zoo.parse_shape(args.input_shape) if args.input_shape else None
    if (args.no_width or args.no_density) and args.runtime != "sparse":
        raise SearchError(f"--{'no-width' if args.no_width else 'no-density'} chooses the genome of --runtime sparse; "
                          "under executorch the genome is width-only already")
    if args.no_width and args.no_density:
        raise SearchError("--no-width with --no-density leaves nothing to search; drop one of them")
    settings = SearchSettings(pop=args.pop, gens=args.gens, seed=args.seed, budgets=budgets, algorithm=args.algorithm,
                              bounds=_bounds(args.bound), runtime=args.runtime,
                              prune_widths=not args.no_width, prune_densities=not args.no_density,
                              latency_range=None if args.max_latency is None and not args.min_latency
                              else (args.min_latency, args.max_latency))
    if ":" not in args.model:
        args.model = zoo.canonical_name(args.model)  # one name per network: an alias is recorded as its name
    if ":" not in args.model and args.model not in zoo.ZOO:
        raise SearchError(f"unknown model {args.model!r}; choose one of {', '.join(zoo.ZOO)} or give module:function")
    if ":" in args.model and shape is None:
        raise SearchError(f"model {args.model} needs --input-shape (e.g. 1,3,224,224)")
    if args.accuracy not in ("proxy", "digits") and ":" not in args.accuracy:
        raise SearchError(f"--accuracy must be proxy, digits or module:function, got {args.accuracy!r}")
    if args.accuracy == "digits" and args.model != "digits":
        raise SearchError("--accuracy digits needs --model digits")
    out = Path(args.out)
    check_output_dir(out, "--out")  # before the search, not after it: a run that cannot be written is not run
    if shape is not None:
        check_input_shape(shape)
    latency_predictor = _load_predictor(args.predictor)
    model, shape = zoo.resolve(args.model, shape)
    space = build_space(model, shape, settings, args.model)
    from .objectives import LatencyModel
    # an operator no program spec expresses (or, under sparse, the engine cannot run) is said before any work
    LatencyModel(latency_predictor, space, settings.runtime).check_program()
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SearchError(f"cannot create run directory {out}: {os_error_reason(exc)}") from None
    try:
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
                stopped = None
            except SearchInterrupted as stop:
                progress.live.transient = True
                if stop.result is None:
                    raise KeyboardInterrupt from None
                result, latency, seconds, stopped = stop.result, stop.latency, stop.seconds, stop
            except BaseException:  # the error sentence should stand alone, not under a half-filled bar
                progress.live.transient = True
                if not console.is_terminal:
                    console.file = io.StringIO()
                raise
    except KeyboardInterrupt:
        _remove_empty(created)  # nothing to keep: no run directory left behind empty
        print("jcw search: interrupted before the first generation finished; nothing was written.", file=sys.stderr)
        return 130
    except BaseException:
        _remove_empty(created)
        raise
    with _deferred_ctrl_c(stopped is not None):  # writing what an interrupted search found must not be cut
        front = candidates(space, latency, accuracy, result.X[result.front])
        if not front and stopped is None:
            raise SearchError("no candidate satisfies the --min-latency/--max-latency range; widen it")
        refs = references(space, latency, accuracy)
        card = getattr(latency_predictor, "card", None)
        meta = {"model": args.model, "input_shape": list(shape), "model_seed": 0, "predictor": str(args.predictor),
                "accuracy": args.accuracy, "algorithm": settings.algorithm, "settings": settings_to_json(settings),
                **run_meta(latency, card),
                "evaluations": result.evaluations, "predictor_calls": latency.calls, "wall_s": seconds,
                "n_layers": space.n_layers, "n_genes": space.n_var, "generations_done": result.generations}
        if stopped is not None:
            meta["interrupted"] = True
        written, failure = _write_or_rescue(out, meta, front, refs, budgets, program_records(space, front))
    if failure is not None:
        raise SearchError(f"cannot write the run to {short_path(out)} ({failure}); the finished search was saved to "
                          f"{written} instead, move it where you want it")
    if stopped is not None:
        print(f"jcw search: interrupted after generation {result.generations} of {settings.gens}; the front so far "
              f"({len(front)} candidates) is written to {written} (run.json says \"interrupted\": true), rerun "
              f"for the full search.", file=sys.stderr)
        return 130
    Console().print(summary_table(front, refs, budgets, meta, seconds, out))
    notes = Console(soft_wrap=True, highlight=False)
    for line in run_notes(meta):
        notes.print(line)
    return 0


def _remove_empty(created: list[Path]) -> None:
    """Remove the directories this run created (deepest first) while they are empty."""
    for directory in created:
        try:
            directory.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def _deferred_ctrl_c(active: bool):
    """While writing what an interrupted search found, a further Ctrl-C waits until the files are written."""
    if not active or threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _write_or_rescue(out: Path, meta, front, refs, budgets, program_lines) -> tuple[Path, str | None]:
    """Write the run to `out`; if that fails after the search (a full disk, a directory made read-only
    meanwhile), write it to a new directory under the system's temporary directory instead, so the finished
    search is never lost. Returns (where it went, why `out` failed or None)."""
    from .run import write_run
    try:
        return write_run(out, meta, front, refs, budgets, program_lines), None
    except (OSError, SearchError) as exc:
        reason = os_error_reason(exc) if isinstance(exc, OSError) else str(exc)
    rescue = Path(tempfile.mkdtemp(prefix="jcw-search-rescued-"))
    write_run(rescue, {**meta, "written_instead_of": str(out)}, front, refs, budgets, program_lines)
    return rescue, reason


def summary_rows(front: list[dict], budgets) -> list[tuple[str, dict | None]]:
    """(label, candidate) rows of the summary table, never the same budget or candidate twice: the given
    budgets (label: the budget), or else the front's candidates at its quartiles of latency."""
    from .run import best_per_budget
    if budgets:
        shown = tuple(dict.fromkeys(budgets))
        return [(f"{b:g}", c) for b, c in zip(shown, best_per_budget(front, shown))]
    ordered = sorted(front, key=lambda c: c["latency_ms"])
    picks = dict.fromkeys(int(round(q * (len(ordered) - 1))) for q in (0.25, 0.5, 1.0))
    return [(f"{100 * i / max(1, len(ordered) - 1):.0f}%", ordered[i]) for i in picks]


def summary_table(front: list[dict], refs: list[dict], budgets, meta: dict, seconds: float, out: Path):
    from rich.table import Table
    runtime = meta["runtime"]
    threads = meta.get("threads")
    table = Table(title=f"jcw search: {meta['model']}, {len(front)} candidates on the front, {seconds:.1f} s; "
                        f"latency = {runtime}" + (f", {threads} thread(s)" if threads else ""))
    columns = ["budget ms" if budgets else "front position", f"{runtime} ms", "accuracy", "mean width"]
    if runtime == "sparse":
        columns += ["sparse layers", "mean density", ".pte (executorch) ms"]
    for col in columns:
        table.add_column(col, justify="right")
    for label, cand in summary_rows(front, budgets):
        if cand is None:
            table.add_row(label, "none fits", *[""] * (len(columns) - 2))
            continue
        row = [label, f"{cand['latency_ms']:.4g}", f"{cand['accuracy']:.4f}",
               f"{np.mean(cand['widths']):.2f}"]
        if runtime == "sparse":
            sparse = sum(layer["impl"] == "sparse" for layer in cand["layers"])
            pte = cand.get("latency_ms_by_runtime", {}).get("executorch")
            row += [f"{sparse}/{len(cand['layers'])}", f"{np.mean(cand['densities']):.2f}",
                    "unknown" if pte is None else f"{pte:.4g}"]
        table.add_row(*row)
    base = next((r for r in refs if r["kind"] == "width" and r["value"] == 1.0), None)
    if base:
        table.caption = f"unpruned: {base['latency_ms']:.4g} ms, accuracy {base['accuracy']:.4f}; written to {out}"
    return table


def run_notes(meta: dict) -> list[str]:
    """Sentences under the table: how latency was predicted, unmodelled operators, the sparse caveat."""
    how = meta.get("sparse_program_model") if meta["runtime"] == "sparse" else meta.get("program_model")
    notes = [f"latency: {meta['latency_meaning']}; whole programs by {how}"]
    unmodelled = meta.get("unmodelled_ops") or []
    if unmodelled:
        kinds = sorted({op["op"] for op in unmodelled})
        notes.append(f"unmodelled operators: {len(unmodelled)} ({', '.join(kinds)}) run in the deployed program but "
                     "the whole-program prediction does not count them, so it is optimistic by their cost")
    if meta.get("sparse_unavailable"):
        notes.append(f"sparse engine latency unknown: {meta['sparse_unavailable']}")
    if meta.get("note"):
        notes.append(f"[bold]NOTE[/bold]: {meta['note']}")
    return notes
