"""`jcw export`: rebuild a chosen front candidate as a real pruned torch model, check it against its
layer specs, save it with its pruning masks, its layer list (JSONL) and its program spec, export the
channel-pruned network to ExecuTorch (.pte, XNNPACK partitioner), check its output, and measure it on
the predictor's device with the native ExecuTorch runner (or on this host through executorch.runtime).
Under runtime sparse it also writes the network file (.jcwnet) the sparse engine runs, and measures it.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from jcw.profiler.cliargs import OutputPathError, check_output_file, os_error_reason, short_path
from jcw.profiler.layerspec import write_jsonl
from jcw.profiler.netfile import SUFFIX as NET_SUFFIX
from jcw.profiler.program_build import quiet_executorch

from .errors import DeviceMeasureError, SearchError
from .netexport import NetworkExport, export_network, pruned_conv_layers, write_network
from .prune import apply_genome, check_against_specs, make_permanent, save_pruned
from .run import build_space, load_run, settings_from_json
from .zoo import resolve


def pick(front: list[dict], budget_ms: float) -> tuple[int, dict]:
    """The most accurate candidate whose predicted latency fits the budget."""
    fitting = [(i, c) for i, c in enumerate(front) if c["latency_ms"] <= budget_ms]
    if not fitting:
        fastest = min(c["latency_ms"] for c in front)
        raise SearchError(f"no candidate fits {budget_ms:g} ms; the fastest on the front takes {fastest:.3g} ms")
    return max(fitting, key=lambda ic: (ic[1]["accuracy"], -ic[1]["latency_ms"]))


def rebuild(run_dir: str | Path, confirmed_model: str | None = None
            ) -> tuple[nn.Module, tuple[int, ...], object, dict, list[dict]]:
    """Base model, input shape, search space and run metadata of a run directory.

    A run of a user `module:function` model is rebuilt only when the caller names that same
    function: importing it runs its code, and a run directory may come from someone else.
    """
    run_dir = Path(run_dir)
    meta, front = load_run(run_dir)
    model_name = meta.get("model")
    if isinstance(model_name, str) and ":" in model_name and confirmed_model != model_name:
        raise SearchError(f"run {run_dir} was searched on the user function {model_name}; importing it runs its "
                          f"code, so confirm you trust it with --model {model_name}")
    try:
        model, shape = resolve(meta["model"], tuple(meta["input_shape"]), meta.get("model_seed", 0))
        settings = settings_from_json(meta["settings"])
    except (KeyError, TypeError) as exc:
        raise SearchError(f"search run {run_dir} has an incomplete run.json ({exc})") from None
    base = run_dir / "base_model.pt"
    if base.exists():
        try:
            model.load_state_dict(torch.load(base, weights_only=True))
        except Exception as exc:  # a damaged file or one of another model; torch raises several types
            raise SearchError(f"{base} is not a state dict of the run's model {meta['model']} "
                              f"({type(exc).__name__})") from None
    return model.eval(), shape, build_space(model, shape, settings, str(meta["model"])), meta, front


def export_pte(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """torch.export -> edge dialect lowered to XNNPACK -> ExecuTorch program file."""
    path = Path(path)
    try:
        with quiet_executorch():
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
            exported = torch.export.export(model.eval(), (example,))
            program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    except Exception as exc:  # export failures come from deep inside torch; report them in one line
        raise SearchError(f"ExecuTorch export failed ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    try:
        path.write_bytes(program.buffer)
    except OSError as exc:
        raise SearchError(f"cannot write {short_path(path)}: {os_error_reason(exc)}") from None
    return path


def run_pte(path: str | Path, example: torch.Tensor, reps: int = 20, warmup: int = 3) -> dict:
    """Load the .pte with executorch.runtime, run it `reps` times; output and median/min ms."""
    with quiet_executorch():
        from executorch.runtime import Runtime
        method = Runtime.get().load_program(Path(path)).load_method("forward")
    for _ in range(warmup):
        method.execute([example])
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        output = method.execute([example])
        times.append((time.perf_counter() - start) * 1e3)
    return {"output": output[0], "median_ms": float(np.median(times)), "min_ms": float(np.min(times)),
            "reps": reps}


HOST = "host"
#: The statistic on both sides of measured / predicted: the predictor is trained on it, the runner reports it.
STATISTIC = "latency_ms = us_min of the fastest round (the fastest single run)"


def predicted_pte_ms(candidate: dict) -> tuple[float, str]:
    """The predicted latency of the .pte itself (ExecuTorch, every layer dense) and what it is."""
    by = candidate.get("latency_ms_by_runtime") or {}
    if by.get("executorch") is not None:
        return float(by["executorch"]), "whole program, executorch"
    if by:
        return float(candidate["latency_ms"]), "sum of layers at their faster kernel (no whole-program prediction)"
    return float(candidate["latency_ms"]), "sum of layers (a run from before whole-program prediction)"


def measure(paths: list[Path], device: str, threads: int | None, rounds: int, reps: int,
            example: torch.Tensor) -> list[dict]:
    """Time .pte files on `device` with the native ExecuTorch runner (profiler.session.measure_programs),
    or on this machine through executorch.runtime in Python when `device` is "host"."""
    if device == HOST:
        out = []
        for path in paths:
            timing = run_pte(path, example, reps)
            out.append({"latency_ms": timing["min_ms"], "us_min": 1e3 * timing["min_ms"],
                        "us_median": 1e3 * timing["median_ms"], "reps": reps, "rounds": 1, "threads": None,
                        "runtime": "executorch", "device": "host (executorch.runtime in Python)"})
        return out
    from jcw.profiler import session  # deferred: the device harness is loaded only to measure
    return session.measure_programs(device, [str(p) for p in paths], threads=threads, rounds=rounds)


def output_paths(out: str | Path, runtime: str) -> tuple[Path, Path | None]:
    """The .pte (always written: the dense deployment) and, under runtime sparse, the .jcwnet beside it."""
    out = Path(out)
    stem = out.with_suffix("")
    pte = stem.with_name(stem.name + ".pte") if out.suffix == NET_SUFFIX else out
    return pte, (stem.with_name(stem.name + NET_SUFFIX) if runtime == "sparse" else None)


def write_network_file(dense: nn.Module, example: torch.Tensor, path: Path, name: str,
                       sparse_layers: list[str]) -> NetworkExport:
    """The pruned model (masks made permanent) as the sparse engine's network file, checked by read_net."""
    network = export_network(dense, example, name=name, sparse_layers=sparse_layers)
    write_network(network, path)
    return network


def measure_network(path: Path, device: str, threads: int | None, rounds: int) -> tuple[dict | None, str | None]:
    """(the sparse engine's timing of a .jcwnet, None) or (None, one sentence why it was not measured):
    a failure here never costs the files already written. On "host" the host engine (device local) runs it."""
    from jcw.profiler import session  # deferred: the device harness is loaded only to measure
    from jcw.profiler.program_session import DeviceError
    target = "local" if device == HOST else device
    try:
        return session.measure_programs(target, [str(path)], threads=threads, rounds=rounds, key="net")[0], None
    except (DeviceError, ValueError) as exc:
        return None, f"the network file was not measured on {target}: {str(exc).rstrip('.')}"


def network_report(network: NetworkExport | None, path: Path | None, measured: dict | None,
                   error: str | None) -> dict:
    """The report fields of the network file: where it is, what runs sparse, what the engine measured."""
    if network is None:
        return {"net": None}
    return {"net": str(path), "net_sparse_layers": network.sparse_layers, "net_layers": len(network.nodes),
            "net_measured_ms": None if measured is None else measured["latency_ms"],
            "net_measured_median_ms": None if measured is None or measured.get("us_median") is None
            else measured["us_median"] / 1e3,
            "net_max_abs_error": None if measured is None else measured.get("max_abs_error"),
            "net_conversions": None if measured is None else measured.get("conversions"),
            "net_measure_error": error}


def export_candidate(run_dir: str | Path, budget_ms: float, out: str | Path, reps: int = 20,
                     compare_unpruned: bool = False, confirmed_model: str | None = None,
                     device: str | None = None, rounds: int = 1, say=lambda text: None,
                     runtime: str | None = None) -> dict:
    """Everything `jcw export` does; returns the report (also written to <out>.export.json).

    The .pte is measured on `device` (default: the predictor's device recorded in run.json) at the
    predictor's thread count, against the candidate's predicted whole-program ExecuTorch latency.
    `runtime` (default: the run's) sparse also writes and measures <out>.jcwnet for the sparse engine.
    """
    out = Path(out)
    try:  # before minutes of rebuilding and exporting: where the files go must be writable
        check_output_file(out, "--out")
    except OutputPathError as exc:
        raise SearchError(str(exc)) from None
    model, shape, space, meta, front = rebuild(run_dir, confirmed_model)
    runtime = runtime or meta.get("runtime") or "executorch"
    out, net_path = output_paths(out, runtime)
    index, candidate = pick(front, budget_ms)
    x = np.array(candidate["genome"])
    if x.shape != (space.n_var,) or x.dtype.kind not in "iu" or np.any(x < space.xl) or np.any(x > space.xu):
        raise SearchError(f"candidate {index} of {run_dir} has a genome that does not fit the run's model; "
                          f"front.json was edited or belongs to another run")
    x = x.astype(np.int64)
    device = device or meta.get("device_address") or HOST
    threads = meta.get("threads")
    expected = space.layer_specs(x)
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    say("rebuilding and checking the candidate")
    pruned = apply_genome(model, space, x).eval()
    check_against_specs(pruned, example, expected)
    stem = out.with_suffix("")
    side = {kind: stem.with_name(stem.name + suffix) for kind, suffix in (
        ("pruned", ".pruned.pt"), ("layers", ".layers.jsonl"), ("program", ".program.json"),
        ("report", ".export.json"), ("unpruned", ".unpruned.pte"))}
    try:
        save_pruned(pruned, side["pruned"])
        write_jsonl(side["layers"], [{"id": layer["name"], **spec.to_dict(), "impl": layer["impl"]}
                                     for spec, layer in zip(expected, candidate["layers"])])
        program = _program_spec(space, x)
        if program is not None:
            side["program"].write_text(json.dumps(program, indent=1))
    except OSError as exc:
        raise SearchError(f"cannot write next to {short_path(out)}: {os_error_reason(exc)}") from None
    except RuntimeError as exc:  # torch.save reports an unwritable path as a RuntimeError
        raise SearchError(f"cannot write {short_path(side['pruned'])}: {' '.join(str(exc).split())[:200]}") from None
    dense = make_permanent(copy.deepcopy(pruned))
    with torch.no_grad():
        reference = dense(example)
    say("exporting to ExecuTorch")
    export_pte(dense, example, out)
    network = None
    if net_path is not None:
        say("writing the sparse engine's network file")
        network = write_network_file(dense, example, net_path, str(meta["model"]), pruned_conv_layers(space, x))
    paths = [out]
    if compare_unpruned:
        export_pte(model, example, side["unpruned"])
        paths.append(side["unpruned"])
    say("checking the .pte's output on this machine")
    err = float((run_pte(out, example, reps=1, warmup=0)["output"] - reference).abs().max())
    say(f"measuring the .pte on {device}")
    written = ", ".join(str(p) for p in (out, *([net_path] if network else []), side["pruned"], side["layers"]))
    from jcw.android_harness.device import DeviceUsageError
    from jcw.profiler.program_session import DeviceError  # the harness's error type, as the profiler raises it
    try:
        measured = measure(paths, device, threads, rounds, reps, example)
    except (DeviceError, ValueError) as exc:
        failed_device = isinstance(exc, DeviceError) and not isinstance(exc, DeviceUsageError)
        raise (DeviceMeasureError if failed_device else SearchError)(
            f"the .pte could not be measured on {device} ({str(exc).rstrip('.')}); {written} are written and stay"
        ) from None
    net_measured, net_error = (None, None) if network is None else measure_network(net_path, device, threads, rounds)
    predicted, predicted_what = predicted_pte_ms(candidate)
    result = measured[0]
    report = {"candidate": index, "pte": str(out), "device": result.get("device", device),
              "runtime": result.get("runtime", "executorch"), "threads": result.get("threads"),
              "predicted_ms": predicted, "predicted_what": predicted_what, "measured_ms": result["latency_ms"],
              "ratio": result["latency_ms"] / predicted, "statistic": STATISTIC,
              "measured_median_ms": None if result.get("us_median") is None else result["us_median"] / 1e3,
              "reps": result.get("reps"), "rounds": result.get("rounds"), "predictor_threads": threads,
              "predictor_device": meta.get("device_address"), "run_runtime": candidate.get("runtime", "sparse"),
              "run_latency_ms": candidate["latency_ms"], "accuracy": candidate["accuracy"], "max_abs_err": err,
              "sparse_layers": [layer["name"] for layer in candidate["layers"] if layer["impl"] == "sparse"],
              "unmodelled_ops": candidate.get("unmodelled_ops", []), "predictor": meta.get("predictor"),
              "n_layers": len(expected), "files": {k: str(v) for k, v in side.items()
                                                   if k != "unpruned" or compare_unpruned},
              "export_runtime": runtime, **network_report(network, net_path, net_measured, net_error)}
    if network is not None:
        report["files"]["net"] = str(net_path)
        # the engine's whole-network prediction the search made for this candidate (None in runs from before it)
        predicted_net = (candidate.get("latency_ms_by_runtime") or {}).get("sparse")
        report["net_predicted_ms"] = predicted_net
        report["net_ratio"] = None if predicted_net is None or net_measured is None \
            else net_measured["latency_ms"] / predicted_net
    if compare_unpruned:
        refs = {(r["kind"], r["value"]): r for r in meta.get("references", [])}
        full = refs.get(("width", 1.0), {})
        report["unpruned_measured_ms"] = measured[1]["latency_ms"]
        report["unpruned_predicted_ms"] = (full.get("latency_ms_by_runtime") or {}).get(
            "executorch", full.get("latency_ms"))
    try:
        side["report"].write_text(json.dumps(report, indent=1))
    except OSError as exc:
        raise SearchError(f"cannot write {short_path(side['report'])}: {os_error_reason(exc)}; the .pte and the "
                          f"files beside it are written, and it measured {report['measured_ms']:.4g} ms") from None
    return report


def _program_spec(space, x) -> dict | None:
    try:
        return space.program_spec(x)
    except SearchError:
        return None      # a sparse-runtime run of a model no program spec expresses: no program file
