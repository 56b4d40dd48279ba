"""`jcw export`: rebuild a chosen front candidate as a real pruned torch model, check it against its
layer specs, save it with its pruning masks and its layer list (JSONL), export the channel-pruned
network to ExecuTorch (.pte, XNNPACK partitioner), run it through executorch.runtime and time it.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from profiler.layerspec import write_jsonl

from .errors import SearchError
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
    return model.eval(), shape, build_space(model, shape, settings), meta, front


@contextlib.contextmanager
def _quiet_executorch():
    """ExecuTorch's import chatter (optional torchao kernels, deprecations, cpuinfo probes on stderr)
    is not the user's business; real errors still raise."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def export_pte(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """torch.export -> edge dialect lowered to XNNPACK -> ExecuTorch program file."""
    path = Path(path)
    try:
        with _quiet_executorch():
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
            exported = torch.export.export(model.eval(), (example,))
            program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    except Exception as exc:  # export failures come from deep inside torch; report them in one line
        raise SearchError(f"ExecuTorch export failed ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    try:
        path.write_bytes(program.buffer)
    except OSError as exc:
        raise SearchError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def run_pte(path: str | Path, example: torch.Tensor, reps: int = 20, warmup: int = 3) -> dict:
    """Load the .pte with executorch.runtime, run it `reps` times; output and median/min ms."""
    with _quiet_executorch():
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


def export_candidate(run_dir: str | Path, budget_ms: float, out: str | Path, reps: int = 20,
                     compare_unpruned: bool = False, confirmed_model: str | None = None) -> dict:
    """Everything `jcw export` does; returns a report dict for the summary table."""
    out = Path(out)
    model, shape, space, meta, front = rebuild(run_dir, confirmed_model)
    index, candidate = pick(front, budget_ms)
    x = np.array(candidate["genome"])
    if x.shape != (space.n_var,) or x.dtype.kind not in "iu" or np.any(x < space.xl) or np.any(x > space.xu):
        raise SearchError(f"candidate {index} of {run_dir} has a genome that does not fit the run's model; "
                          f"front.json was edited or belongs to another run")
    x = x.astype(np.int64)
    expected = space.layer_specs(x)
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    pruned = apply_genome(model, space, x).eval()
    check_against_specs(pruned, example, expected)
    stem = out.with_suffix("")
    try:
        save_pruned(pruned, stem.with_name(stem.name + ".pruned.pt"))
        write_jsonl(stem.with_name(stem.name + ".layers.jsonl"),
                    [{"id": layer["name"], **spec.to_dict(), "impl": layer["impl"]}
                     for spec, layer in zip(expected, candidate["layers"])])
    except OSError as exc:
        raise SearchError(f"cannot write next to {out}: {exc.strerror or exc}") from None
    dense = make_permanent(copy.deepcopy(pruned))
    with torch.no_grad():
        reference = dense(example)
    export_pte(dense, example, out)
    timing = run_pte(out, example, reps)
    err = float((timing["output"] - reference).abs().max())
    unpruned = {}
    if compare_unpruned:
        # the unpruned network timed the same way: measured speed-up against predicted speed-up
        full_path = stem.with_name(stem.name + ".unpruned.pte")
        export_pte(model, example, full_path)
        refs = {(r["kind"], r["value"]): r for r in meta.get("references", [])}
        unpruned = {"unpruned_measured_ms": run_pte(full_path, example, reps)["median_ms"],
                    "unpruned_predicted_ms": refs.get(("width", 1.0), {}).get("latency_ms")}
    return {**unpruned, "candidate": index, "predicted_ms": candidate["latency_ms"], "measured_ms": timing["median_ms"],
            "measured_min_ms": timing["min_ms"], "accuracy": candidate["accuracy"], "max_abs_err": err,
            "sparse_layers": [layer["name"] for layer in candidate["layers"] if layer["impl"] == "sparse"],
            "predictor": meta.get("predictor"), "pte": str(out), "n_layers": len(expected)}
