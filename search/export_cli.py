"""`jcw export`'s command: a search run's candidate (search.export) or a uniformly pruned zoo model
(search.uniform) to a .pte, and under runtime sparse a .jcwnet, with the summary table or JSON report.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from jcw.profiler.cliargs import check_output_file

from .errors import SearchError


def export_command(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    if (args.run is None) == (args.uniform is None):
        raise SearchError("jcw export takes either --run (a candidate of a search run) or --uniform (a uniformly "
                          "pruned zoo model), " + ("not both" if args.run else "and got neither"))
    if args.uniform is not None:
        return _export_uniform(args)
    if args.pick is None:
        raise SearchError("--run needs --pick, the latency budget in ms the candidate must fit")
    if args.threads is not None:
        raise SearchError("--threads is for --uniform; a run's candidate is measured at its predictor's thread count")
    if not (math.isfinite(args.pick) and args.pick > 0):
        raise SearchError(f"--pick must be a positive number of ms, got {args.pick}")
    if args.reps < 1:
        raise SearchError(f"--reps must be >= 1, got {args.reps}")
    if args.rounds < 1:
        raise SearchError(f"--rounds must be >= 1, got {args.rounds}")
    out = Path(args.out)
    check_output_file(out, "--out")  # before minutes of rebuilding and exporting, not after
    from .export import export_candidate  # deferred past the checks above: it imports torch
    console = Console(stderr=True)
    with console.status("rebuilding, checking and exporting the candidate") as status:
        report = export_candidate(args.run, args.pick, args.out, args.reps, args.compare_unpruned, args.model,
                                  device=args.device, rounds=args.rounds, say=lambda text: status.update(text),
                                  runtime=args.runtime)
    if args.json:
        print(json.dumps(report))
        return 0
    threads = report["threads"]
    table = Table(title=f"jcw export: candidate {report['candidate']} -> {report['pte']}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row(f"predicted ({report['predicted_what']}, {report['predictor_device'] or 'predictor device'}, "
                  f"{report['predictor_threads'] or 'default'} thread(s))", f"{report['predicted_ms']:.4g} ms")
    table.add_row(f"measured on {report['device']} ({report['runtime']}, {threads or 'default'} thread(s))",
                  f"{report['measured_ms']:.4g} ms")
    table.add_row("measured / predicted", f"{report['ratio']:.2f}")
    if report.get("unpruned_predicted_ms"):
        measured = report["unpruned_measured_ms"] / report["measured_ms"]
        predicted = report["unpruned_predicted_ms"] / report["predicted_ms"]
        table.add_row("unpruned .pte measured", f"{report['unpruned_measured_ms']:.4g} ms")
        table.add_row("speed-up measured / predicted", f"{measured:.2f}x / {predicted:.2f}x")
    table.add_row("accuracy estimate", f"{report['accuracy']:.4f}")
    table.add_row("max |pte - torch|", f"{report['max_abs_err']:.2e}")
    _network_rows(table, report)
    sparse = report["sparse_layers"]
    if report["run_runtime"] == "sparse":
        table.add_row("layers the search ran sparse", f"{len(sparse)}/{report['n_layers']}")
    caption = [f"both sides: {report['statistic']}"]
    if report["run_runtime"] == "sparse":
        caption.append(f"the run optimised runtime sparse ({report['run_latency_ms']:.4g} ms); this .pte runs every "
                       "layer dense on ExecuTorch" + (" (sparse in the search: " + ", ".join(sparse[:8])
                                                      + (" ..." if len(sparse) > 8 else "") + ")" if sparse else ""))
    if report["unmodelled_ops"]:
        caption.append(f"{len(report['unmodelled_ops'])} unmodelled operators are not in the prediction")
    table.caption = "; ".join(caption)
    Console().print(table)
    return 0


def _network_rows(table, report: dict) -> None:
    """The .jcwnet's rows of an export table: its path, its sparse layers and what the sparse engine measured."""
    if not report.get("net"):
        return
    table.add_row("network file (sparse engine)", report["net"])
    table.add_row("layers it runs sparse", f"{len(report['net_sparse_layers'])}/{report['net_layers']} nodes")
    if report.get("net_predicted_ms") is not None:
        table.add_row("predicted, sparse engine (whole network)", f"{report['net_predicted_ms']:.4g} ms")
    if report.get("net_measured_ms") is not None:
        table.add_row("measured, sparse engine", f"{report['net_measured_ms']:.4g} ms")
        if report.get("net_ratio") is not None:
            table.add_row("measured / predicted, sparse engine", f"{report['net_ratio']:.2f}")
        if report.get("net_max_abs_error") is not None:
            table.add_row("max |engine - torch|", f"{report['net_max_abs_error']:.2e}")
    elif report.get("net_measure_error"):
        table.add_row("sparse engine", report["net_measure_error"])


def _export_uniform(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    if args.pick is not None:
        raise SearchError("--pick picks a candidate of a --run; --uniform exports one network, so drop --pick")
    if args.model is None:
        raise SearchError("--uniform needs --model, the zoo model to prune")
    if args.rounds < 1:
        raise SearchError(f"--rounds must be >= 1, got {args.rounds}")
    if args.threads is not None and args.threads < 1:
        raise SearchError(f"--threads must be >= 1, got {args.threads}")
    from .uniform import export_uniform, parse_uniform
    width, density = parse_uniform(args.uniform)
    check_output_file(Path(args.out), "--out")
    console = Console(stderr=True)
    with console.status("pruning and exporting") as status:
        report = export_uniform(args.model, width, density, args.runtime or "executorch", args.out,
                                device=args.device, threads=args.threads, rounds=args.rounds, reps=args.reps,
                                say=lambda text: status.update(text))
    if args.json:
        print(json.dumps(report))
        return 0
    table = Table(title=f"jcw export: {args.model} at uniform width {width:g}, density {density:g} -> {report['pte']}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("weight-pruned layers", f"{len(report['weight_pruned_layers'])}/{report['n_layers']}")
    table.add_row("max |pte - torch|", f"{report['max_abs_err']:.2e}")
    if report["measured_ms"] is not None:
        table.add_row(f"measured .pte on {report['device']}", f"{report['measured_ms']:.4g} ms")
    _network_rows(table, report)
    Console().print(table)
    return 0
