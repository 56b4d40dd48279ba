"""`jcw measure`: layers (the runner's result lines) or whole programs (.pte on ExecuTorch, .jcwnet on the sparse
engine) on one device, or on every phone of a lab, as a table or JSON lines. profiler.cli registers the
command's arguments and hands its runs over here.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from jcw.profiler import cli, labels, program_measure, session
from jcw.profiler.cli_display import LazyBar
from jcw.profiler.layerspec import read_jsonl


def cmd_measure(args: argparse.Namespace) -> int:
    """`jcw measure --layers | --pte | --net`: exit 0, 1 when a layer failed, 2 with one sentence on bad input."""
    if (args.weights or args.cold_bytes) and not args.layers:
        return cli._fail("measure", "--weights and --cold-bytes are how layers are timed (--layers); a whole program "
                                    "(--pte, --net) reads its weights as it runs, so it has no such choice.")
    if (lab_cli := cli._lab(args)) is not None:
        if args.layers:
            return cli._fail("measure", "--layers measures one device at a time; give one --device, or --pte/--net "
                                        "for every phone of the lab.")
        return lab_cli.measure_lab(args, "measure")
    if args.pte or args.net:
        return _measure_programs(args)
    layers = read_jsonl(args.layers)
    specs = [(str(obj.get("id", f"line{n}")), spec) for n, (obj, spec) in enumerate(layers, start=1)]
    if args.impl == "sparse" and any(spec.op == "dwconv" for _, spec in specs):
        return cli._fail("measure", "--impl sparse cannot measure a dwconv layer (depthwise runs dense only); "
                                    "use --impl both")
    first_with_id: dict[str, int] = {}
    for number, (layer_id, _) in enumerate(specs, start=1):  # results find their layer by id
        if layer_id in first_with_id:
            return cli._fail("measure", f"--layers {args.layers}: layers {first_with_id[layer_id]} and {number} "
                                        f"share the id {layer_id!r}; give each layer its own id, as results are "
                                        "matched by it")
        first_with_id[layer_id] = number
    by_id = dict(specs)
    results = []
    weights = args.weights or labels.DEFAULT_WEIGHTS
    try:
        runner_argv = cli._runner_argv(args.runner_arg) + labels.weights_runner_args(weights, args.cold_bytes)
    except (cli._BadRunnerArg, labels.LabelModeError) as exc:
        return cli._fail("measure", str(exc))
    with session.open_device(args.device) as device, LazyBar("measuring") as progress:
        for result in session.measure(device, specs, impl=args.impl, threads=args.threads or 1,
                                      runner_args=runner_argv, progress=progress):
            if args.json:
                print(json.dumps(result), flush=True)
            results.append(result)
    failures = sum(1 for r in results if r.get("error"))
    if not args.json:
        rotated = f" over {labels.rotation(args.cold_bytes)}" if weights == "cold" else ""
        table = Table(title=f"{len(results)} measurements, {failures} failed ({weights} weights{rotated}; min us = the "
                            f"fastest repetition, the statistic profiles label with)")
        for column in ("id", "layer", "density", "impl", "median us", "min us", "reps", "error"):
            table.add_column(column, justify="right" if column in ("median us", "min us", "reps") else "left")
        for r in results:
            spec = by_id[r["id"]]
            shape = f"{spec.op} {spec.cin}->{spec.cout} k{spec.k}s{spec.stride} {spec.h}x{spec.w}"
            table.add_row(r["id"], shape, f"{spec.density:g}", r.get("impl", ""),
                          f"{r['us_median']:.1f}" if r.get("us_median") is not None else "",
                          f"{r['us_min']:.1f}" if r.get("us_min") is not None else "",
                          str(r.get("reps", "")), r.get("error") or "")
        Console().print(table)
    return 1 if failures else 0


def _ms(value: float) -> str:
    return f"{value:.3f}" if value >= 1 else f"{value:.3g}"


def _measure_programs(args: argparse.Namespace) -> int:
    """--pte and --net: the same runner path, rounds and statistics; --net adds the sparse engine's fields."""
    key = "net" if args.net else "pte"
    paths = args.net or args.pte
    if key == "pte" and args.sparse_path != "auto":
        return cli._fail("measure", "--sparse-path applies to --net (the sparse engine), not to --pte.")
    try:
        for path in paths:  # before connecting to anything
            program_measure.PROGRAM_FILES[key](path)
        runner_argv = cli._runner_argv(args.runner_arg)
        with session.open_device(args.device) as device, LazyBar("measuring") as progress:
            results = session.measure_programs(device, paths, threads=args.threads, rounds=args.rounds,
                                               runner_args=runner_argv, progress=progress, key=key,
                                               sparse_path=args.sparse_path)
    except session.PteError as exc:
        return cli._fail("measure", f"{str(exc).rstrip('.')}.")
    except cli._BadRunnerArg as exc:
        return cli._fail("measure", str(exc))
    if args.json:
        for result in results:
            print(json.dumps(result), flush=True)
        return 0
    what = "jcw network file(s), sparse engine" if key == "net" else "ExecuTorch program(s)"
    table = Table(title=f"{len(results)} {what} on {args.device}",
                  caption="latency: the fastest repetition of the fastest round")
    for column in ("program", "latency ms", "median ms", "reps", "rounds", "threads"):
        table.add_column(column, justify="left" if column == "program" else "right", no_wrap=True)
    for r in results:
        table.add_row(Path(r[key]).name, _ms(r["latency_ms"]),
                      _ms(r["us_median"] / 1000) if r.get("us_median") is not None else "",
                      str(r["reps"]), str(r["rounds"]), str(r.get("threads", "")))
    if key == "net":  # the engine's own facts, in a second table so both fit a terminal
        Console().print(table)
        table = Table(title="what the sparse engine ran")
        for column in ("program", "sparse layers (path)", "layout conversions", "max abs error vs torch"):
            table.add_column(column, justify="left" if column == "program" else "right", no_wrap=True)
        for r in results:
            sparse, layers = r.get("sparse_layers"), r.get("layers")
            error, path = r.get("max_abs_error"), f" ({r['sparse_path']})" if r.get("sparse_path") else ""
            table.add_row(Path(r[key]).name, f"{len(sparse)}/{layers}{path}" if isinstance(sparse, list) else "",
                          str(r.get("conversions", "")), f"{error:.2e}" if isinstance(error, (int, float)) else "")
        if any(r.get("not_xnnpack") for r in results):
            table.caption = "; ".join(f"{Path(r[key]).name}: segments, because {r['not_xnnpack']}"
                                      for r in results if r.get("not_xnnpack"))
    Console().print(table)
    return 0
