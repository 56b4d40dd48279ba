"""The sparse network engine against the dense .pte, end to end (issue 10, "Must show").

1. Speed-up of the engine (`.jcwnet`, `jcw measure --net`) over the dense ExecuTorch program (`.pte`,
   `jcw measure --pte`) of the same pruned network, same device, same threads, both measured in this run:
   MobileNetV1, MobileNetV2 and ResNet-18 (zoo names mobilenet_v1, mobilenet_v2, resnet18) at uniform
   width 1.0 and density 0.3 / 0.2 / 0.1, as `jcw export --uniform width=W,density=D --runtime sparse`
   defines it: density D on *every groups == 1 convolution except the stem* (the 1x1s of the MobileNets,
   every 3x3 and 1x1 downsample of ResNet-18 but conv1); depthwise convolutions, the stem and the
   classifier stay dense. The anchor of each model is its unpruned network (density 1.0), exported and
   measured the same way: its .pte is the dense deployment every ratio is taken against, its .jcwnet is
   the engine with nothing sparse. `.pte` and `.jcwnet` measurements alternate round by round (one
   `jcw measure` call over all programs, then one over all network files, the order flipped every round),
   so drift on a shared machine hits both sides; each figure is `latency_ms` = `us_min` of the fastest
   round, on both sides.
   With `--segments` every .jcwnet is also timed with `jcw measure --sparse-path segments`: the engine's
   default runs a network that qualifies (a MobileNet-style cluster with more than 2/3 zeros in its 1x1s)
   inside XNNPACK's own sparse inference where that XNNPACK rewrites it (arm64; never x86 with AVX), and
   the extra columns say which path ran and what the engine's own NCHW segments take for the same file.
2. The best joint-searched candidate at two budgets: `--runs DIR...` (`jcw search --runtime sparse`
   runs) are exported with `jcw export --run DIR --pick B --runtime sparse --compare-unpruned` and their
   .pte, .jcwnet and unpruned .pte measured as in 1 at `--budgets` (default: the front's 25th and 75th
   latency percentiles). Without --runs the section says it was skipped.
3. Correctness: every network's `max_abs_error` (the engine against the pruned torch model's output that
   the file carries, checked on the device before timing) and the .pte's against torch on the host;
   "signal" is max |reference - classifier bias|, how much of the output comes from the convolutions at
   all. The zoo's random initialisation makes the MobileNets' activations vanish (~1e-10 before the
   classifier), so on the zoo weights as they are the engine's check would compare a bias with itself;
   by default the BatchNorm statistics are therefore calibrated on 4 random inputs (running mean/var =
   the batch's), which gives unit-scale activations and changes no pruning mask, no shape and no operator
   (BatchNorm is folded into the convolutions either way). `--zoo-weights` measures the zoo's as they
   are (exactly what `jcw export --uniform` writes).
4. Bad input through `jcw measure --net`: a damaged file (one bit flipped in the payload), a foreign one
   (format version 2), a file with a layer the engine cannot run (a softmax node, written with
   `write_net(..., validate=False)`) and a sparse layer at density 0 — each built from a network
   exported above. Exit status and the one sentence, what the engine itself (`ptebench` on this host)
   says about the same file, and whether a finished tiny profile is unchanged and a profile running
   beside the bad commands finishes.

Threads default to 1: this is a shared 2-core VM, where a 2-thread pool (ExecuTorch's default here) turns
timings into scheduler noise (benchmarks/RESULTS.md, "Threads"); on a phone use `--threads` with its
default count. qemu is slow: on the emulated phone use a smaller `--resolution` (the models are
resolution-agnostic; every row says the input size).

Reproduce:
    .venv/bin/python benchmarks/bench_sparse_engine.py                                  # local, 224 px
    .venv/bin/python benchmarks/bench_sparse_engine.py --device emulated --resolution 96 --rounds 2
    .venv/bin/python benchmarks/bench_sparse_engine.py --device emulated --resolution 96 --rounds 2 --segments \
        --models mobilenet_v1,mobilenet_v2 --no-bad-input       # XNNPACK's sparse inference vs segments
    .venv/bin/python benchmarks/bench_sparse_engine.py --runs RUN1 [RUN2] --budgets B1,B2   # + section 2
    tiny: --models mobilenet_v1 --densities 0.1 --resolution 64 --rounds 1
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PY = sys.executable
MODELS = ("mobilenet_v1", "mobilenet_v2", "resnet18")
DENSITIES = (0.3, 0.2, 0.1)
#: the tiny profiles of section 4 time layers only (no whole .pte or .jcwnet programs: minutes each here)
NO_PROGRAMS = ["--programs", "0", "--sparse-programs", "0"]
PTEBENCH = ROOT / "android_harness" / "native" / "build" / "host" / "ptebench"


def jcw(*argv, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "jcw", *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ---- networks -------------------------------------------------------------------------------------
def calibrated(model, resolution: int):
    """`model` with BatchNorm running statistics taken from 4 random inputs: unit-scale activations
    instead of the zoo initialisation's vanishing ones. Weights, shapes and pruning masks are untouched."""
    import torch
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, resolution, resolution, generator=torch.Generator().manual_seed(1)))
    return model.eval()


@contextlib.contextmanager
def zoo_at(resolution: int, calibrate: bool):
    """`jcw export --uniform`'s own code path (search.uniform.export_uniform), with the zoo model at
    `resolution` px (and calibrated BatchNorm statistics unless told otherwise)."""
    from jcw.search import uniform
    from jcw.search.zoo import build
    original = uniform.build

    def build_at(name: str, seed: int = 0):
        model, shape = build(name, seed)
        shape = (*shape[:2], resolution, resolution)
        return (calibrated(model, resolution) if calibrate else model), shape

    uniform.build = build_at
    try:
        yield uniform.export_uniform
    finally:
        uniform.build = original


def signal(net_path: str) -> float | None:
    """max |check output - classifier bias|: how much of the reference output the convolutions make."""
    import numpy as np

    from jcw.profiler.netfile import read_net
    net = read_net(net_path)
    last = net.nodes[-1]
    if last["op"] != "linear" or not last.get("bias"):
        return None
    return float(np.abs(net.check_output.reshape(-1) - net.tensors[last["bias"]].reshape(-1)).max())


def export_rows(models, densities, resolution: int, calibrate: bool, work: Path) -> list[dict]:
    rows = []
    with zoo_at(resolution, calibrate) as export_uniform:
        for model in models:
            for density in (1.0, *densities):
                out = work / f"{model}_d{density:g}.pte"
                started = time.monotonic()
                report = export_uniform(model, 1.0, density, "sparse", out)
                rows.append({"section": "uniform", "model": model, "density": density, "pte": report["pte"],
                             "net": report["net"], "pte_err": report["max_abs_err"],
                             "pruned": len(report["weight_pruned_layers"]), "n_layers": report["n_layers"],
                             "signal": signal(report["net"]), "anchor": f"{model}_d1"})
                rows[-1]["key"] = f"{model}_d{density:g}"
                print(f"  exported {model} density {density:g} at {resolution} px "
                      f"({time.monotonic() - started:.0f} s)", flush=True)
    return rows


def export_runs(runs, budgets, device: str, work: Path) -> list[dict]:
    """Section 2's hook: the best candidate of each sparse-runtime run within each budget."""
    import numpy as np
    rows = []
    for run in runs:
        front = json.loads((Path(run) / "front.json").read_text())
        latencies = sorted(c["latency_ms"] for c in front)
        picks = budgets or [float(np.percentile(latencies, q)) + 1e-9 for q in (25, 75)]
        for budget in picks:
            tag = f"{Path(run).name}_{budget:.4g}ms"
            out = work / f"{tag}.pte"
            proc = jcw("export", "--run", run, "--pick", repr(budget), "--runtime", "sparse", "--out", out,
                       "--device", device, "--compare-unpruned", "--json")
            if proc.returncode:
                print(f"  {tag}: export failed (exit {proc.returncode}): {last_line(proc.stderr)}", flush=True)
                continue
            report = json.loads(last_line(proc.stdout))
            unpruned = out.with_name(out.stem + ".unpruned.pte")
            rows.append({"section": "run", "model": f"{Path(run).name} @ {budget:.4g} ms", "density": None,
                         "pte": report["pte"], "net": report.get("net"), "pte_err": report["max_abs_err"],
                         "pruned": len(report.get("net_sparse_layers") or []), "n_layers": report["n_layers"],
                         "signal": signal(report["net"]) if report.get("net") else None, "key": tag,
                         "anchor": f"{tag}_unpruned", "predicted_ms": report.get("predicted_ms"),
                         "run_latency_ms": report.get("run_latency_ms"),
                         "predicted_what": report.get("predicted_what")})
            rows.append({"section": "anchor", "key": f"{tag}_unpruned", "pte": str(unpruned), "net": None})
    return rows


# ---- measuring ----------------------------------------------------------------------------------
def measure(device: str, kind: str, paths: list[str], threads: int, extra: list[str],
            sparse_path: str = "auto") -> dict[str, dict]:
    """One `jcw measure --pte|--net` call over `paths`, one round: path -> result (or {"error": ...})."""
    argv = ["measure", "--device", device, "--threads", threads, "--rounds", 1, "--json", *extra]
    if kind == "net":
        argv += ["--sparse-path", sparse_path]
    for path in paths:
        argv += [f"--{kind}", path]
    proc = jcw(*argv)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            item = json.loads(line)
            results[item.get(kind)] = item
    for path in paths:
        results.setdefault(path, {"error": last_line(proc.stderr) or f"exit {proc.returncode}"})
    return results


def measure_all(rows, device: str, threads: int, rounds: int, extra: list[str], segments: bool = False) -> None:
    """Fill rows' pte_ms / net_ms (and seg_ms: the engine forced onto its own NCHW segments, with `segments`):
    .pte and .jcwnet calls alternate, order flipped every round; min over rounds."""
    ptes = sorted({r["pte"] for r in rows if r.get("pte")})
    nets = sorted({r["net"] for r in rows if r.get("net")})
    best: dict[tuple[str, str], dict] = {}
    for round_ in range(rounds):
        order = [("pte", ptes), ("net", nets)] + ([("seg", nets)] if segments else [])
        for kind, paths in (order if round_ % 2 == 0 else order[::-1]):
            if not paths:
                continue
            started = time.monotonic()
            measured = measure(device, "net" if kind == "seg" else kind, paths, threads, extra,
                               "segments" if kind == "seg" else "auto")
            for path, result in measured.items():
                held = best.get((kind, path))
                if "error" in result:
                    best.setdefault((kind, path), result)
                elif held is None or "error" in held or result["latency_ms"] < held["latency_ms"]:
                    best[(kind, path)] = result
            print(f"  round {round_ + 1}/{rounds}: {len(paths)} {kind} file(s) on {device} "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
    for row in rows:
        for kind in ("pte", "net", "seg"):
            result = best.get((kind, row.get("net" if kind == "seg" else kind)), {})
            row[f"{kind}_ms"] = result.get("latency_ms")
            row[f"{kind}_error"] = result.get("error")
            if kind == "net" and result:
                row.update(sparse=len(result.get("sparse_layers") or []), layers=result.get("layers"),
                           conversions=result.get("conversions"), net_err=result.get("max_abs_error"),
                           threads=result.get("threads"), xnnpack_sparse=result.get("xnnpack_sparse"),
                           path=result.get("sparse_path"))
            elif kind == "pte" and result:
                row.setdefault("threads", result.get("threads"))


def fmt(value, spec: str = ".3g", none: str = "—") -> str:
    return none if value is None else format(value, spec)


def ratio(a, b) -> str:
    return "—" if a is None or b is None or not b else f"{a / b:.2f}×"


def print_table(rows, title: str) -> None:
    by_key = {r["key"]: r for r in rows}
    segments = any(r.get("seg_ms") is not None for r in rows)
    print(f"\n{title}")
    print("| network | density | .pte ms | .jcwnet ms | speed-up (pte/net) | anchor .pte / net | .pte / anchor .pte "
          "| sparse layers | conversions | max_abs_error engine | max_abs_error .pte | signal |"
          + (" sparse path | segments ms | segments / net |" if segments else ""))
    print("|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if segments else ""))
    for row in rows:
        if row["section"] == "anchor":
            continue
        anchor = by_key.get(row["anchor"], {})
        density = "1.0 (anchor)" if row.get("density") == 1.0 else fmt(row.get("density"), "g")
        net_ms = fmt(row.get("net_ms"), ".4g") if row.get("net_ms") is not None else \
            f"error: {(row.get('net_error') or '')[:120]}"
        pte_ms = fmt(row.get("pte_ms"), ".4g") if row.get("pte_ms") is not None else \
            f"error: {(row.get('pte_error') or '')[:120]}"
        print(f"| {row['model']} | {density} | {pte_ms} | {net_ms} | {ratio(row.get('pte_ms'), row.get('net_ms'))} "
              f"| {ratio(anchor.get('pte_ms'), row.get('net_ms'))} | {ratio(row.get('pte_ms'), anchor.get('pte_ms'))} "
              f"| {fmt(row.get('sparse'), 'd')}/{fmt(row.get('layers'), 'd')} | {fmt(row.get('conversions'), 'd')} "
              f"| {fmt(row.get('net_err'), '.2e')} | {fmt(row.get('pte_err'), '.2e')} "
              f"| {fmt(row.get('signal'), '.3g')} |"
              + (f" {row.get('path') or '—'} | {fmt(row.get('seg_ms'), '.4g')} "
                 f"| {ratio(row.get('seg_ms'), row.get('net_ms'))} |" if segments else ""))


# ---- bad input ------------------------------------------------------------------------------------
def bad_files(source: str, work: Path) -> dict[str, Path]:
    """Four bad network files made from the exported `source`."""
    import numpy as np

    from jcw.profiler.netfile import PREAMBLE, read_net, write_net
    data = bytearray(Path(source).read_bytes())
    _, _, length = PREAMBLE.unpack_from(data)
    header = json.loads(data[16:16 + length])
    payload_start = len(data) - header["payload_bytes"]
    files = {}
    flipped = bytearray(data)
    flipped[payload_start + header["payload_bytes"] // 2] ^= 0x10
    files["damaged (1 bit flipped in the payload)"] = work / "bad_bitflip.jcwnet"
    files["damaged (1 bit flipped in the payload)"].write_bytes(flipped)
    foreign = bytearray(data)
    foreign[8:12] = struct.pack("<I", 2)
    files["foreign (format version 2)"] = work / "bad_version.jcwnet"
    files["foreign (format version 2)"].write_bytes(foreign)
    net = read_net(source)
    base = {"name": net.name, "input_name": net.input_name, "input_shape": net.input_shape, "output": net.output,
            "check_input": net.check_input, "check_output": net.check_output, "tolerance": net.tolerance}
    tensors = {k: v for k, v in net.tensors.items() if not k.startswith("check.")}
    nodes = [dict(n) for n in net.nodes]
    first_sparse = next(i for i, n in enumerate(nodes) if n["op"] == "conv2d" and n.get("sparse"))
    name = nodes[first_sparse]["output"]
    unknown = nodes[:first_sparse + 1] + [{"op": "softmax", "name": "attention", "input": name,
                                           "output": "attention"}] + nodes[first_sparse + 1:]
    files["a layer the engine cannot run (softmax)"] = work / "bad_op.jcwnet"
    write_net(files["a layer the engine cannot run (softmax)"], nodes=unknown, tensors=tensors, validate=False,
              **base)
    zeroed = dict(tensors)
    zeroed[nodes[first_sparse]["weight"]] = np.zeros_like(tensors[nodes[first_sparse]["weight"]])
    files["a sparse layer at density 0"] = work / "bad_density0.jcwnet"
    write_net(files["a sparse layer at density 0"], nodes=nodes, tensors=zeroed, validate=False, **base)
    return files


def engine_says(path: Path) -> str:
    """The engine's own answer to a file (ptebench on this host, bypassing jcw's check in Python)."""
    if not PTEBENCH.exists():
        return "(host ptebench not built)"
    line = json.dumps({"id": "bad", "net": str(path), "threads": 1}) + "\n"
    proc = subprocess.run([str(PTEBENCH)], input=line, capture_output=True, text=True, timeout=300)
    for text in proc.stdout.splitlines():
        if text.startswith("{") and '"id"' in text and '"runner"' not in text:
            item = json.loads(text)
            return item.get("error") or f"ran it ({item.get('us_min')} us)"
    return f"exit {proc.returncode}: {last_line(proc.stderr)}"


def bad_input(source: str, device: str, work: Path) -> bool:
    from bench_bad_input import _one_sentence

    from test_fuzz_cli import FAST, tree_hash
    section = time.monotonic()
    print("\n== 4. bad input through `jcw measure --device "
          f"{device} --net FILE` (made from {Path(source).name}); exit status, the sentence, the engine's own")
    finished = work / "profile_finished"
    proc = jcw("profile", "--device", "local", "--out", finished, "--budget", 6, *NO_PROGRAMS, *FAST)
    if proc.returncode:
        print(f"  could not make the tiny profile: {last_line(proc.stderr)}")
        return False
    before = tree_hash(finished)
    running = work / "profile_running"
    beside = subprocess.Popen([PY, "-m", "jcw", "profile", "--device", "local", "--out", str(running),
                               "--budget", "300", *NO_PROGRAMS, *FAST], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    all_ok = True
    try:
        for what, path in bad_files(source, work).items():
            proc = jcw("measure", "--device", device, "--net", path, "--json")
            ok, sentence = _one_sentence(proc.returncode, proc.stderr, "measure", 2)
            all_ok &= ok and proc.stdout == ""
            print(f"- {what}: exit {proc.returncode}, {'one sentence' if ok else 'NOT ONE SENTENCE'}: {sentence}")
            print(f"  engine (ptebench): {engine_says(path)}")
    finally:
        overlapped = beside.poll() is None
        _, err = beside.communicate(timeout=600)
    unchanged = tree_hash(finished) == before
    print(f"- finished tiny profile ({finished.name}) unchanged after the bad commands: {'yes' if unchanged else 'NO'}")
    print(f"- profile running beside them ({running.name}, budget 300, "
          f"{'still running' if overlapped else 'ALREADY FINISHED'} when the last bad command ended): "
          f"exit {beside.returncode}" + ("" if beside.returncode == 0 else f" ({last_line(err)})"))
    print(f"  ({time.monotonic() - section:.0f} s, the two tiny profiles included)")
    return all_ok and unchanged and beside.returncode == 0


# ---- main -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def device_for(name: str, work: Path):
    if name != "emulated":
        yield name, name
        return
    from benchmarks.bench_push import EmulatorProcess
    with EmulatorProcess(work / "phone") as phone:
        yield f"tcp:{phone.address}", ("the emulated phone (arm64 bundle under qemu-aarch64-static: qemu's speeds, "
                                       "not a phone's; each kernel's emulation cost differs, so ratios are not an ARM "
                                       "phone's either)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="local",
                        help="local (default), emulated (starts the emulated phone), or any `jcw measure` address")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--densities", default=",".join(map(str, DENSITIES)))
    parser.add_argument("--resolution", type=int, default=224, help="input size in px (default 224)")
    parser.add_argument("--threads", type=int, default=1, help="threads on both sides (default 1, see the docstring)")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds per file, alternating (default 3)")
    parser.add_argument("--runner-arg", action="append", default=[], help="passed to `jcw measure` (repeatable)")
    parser.add_argument("--zoo-weights", action="store_true", help="no BatchNorm calibration (see 3. above)")
    parser.add_argument("--runs", nargs="*", default=[], help="`jcw search --runtime sparse` run directories")
    parser.add_argument("--budgets", default="", help="ms, comma-separated (default: front percentiles 25, 75)")
    parser.add_argument("--segments", action="store_true",
                        help="also time every .jcwnet with `--sparse-path segments` (the engine's own NCHW segments) "
                             "beside the default path, which is XNNPACK's own sparse inference where it rewrites")
    parser.add_argument("--no-bad-input", action="store_true")
    parser.add_argument("--keep", type=Path, help="keep the exported files in this directory")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    densities = [float(d) for d in args.densities.split(",") if d]
    budgets = [float(b) for b in args.budgets.split(",") if b]
    extra = [f"--runner-arg={flag}" for flag in args.runner_arg]
    started = time.monotonic()
    status = 0
    with contextlib.ExitStack() as stack:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            work = args.keep
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jcw-sparse-bench-")))
        address, described = stack.enter_context(device_for(args.device, work))
        weights = "zoo weights as they are" if args.zoo_weights else "BatchNorm statistics calibrated (see docstring)"
        print(f"# sparse engine vs dense .pte on {described}; {args.threads} thread(s) both sides; "
              f"{args.resolution}x{args.resolution} input; {args.rounds} alternating round(s); "
              f"latency_ms = us_min of the fastest round; {weights}", flush=True)
        print("\n== exporting (jcw export --uniform width=1.0,density=D --runtime sparse: D on every groups-1 conv "
              "but the stem; density 1.0 = the anchor)", flush=True)
        rows = export_rows(models, densities, args.resolution, not args.zoo_weights, work)
        run_rows = export_runs(args.runs, budgets, address, work) if args.runs else []
        print("\n== measuring", flush=True)
        measure_all(rows + run_rows, address, args.threads, args.rounds, extra, args.segments)
        sparse_build = next((r.get("xnnpack_sparse") for r in rows if r.get("xnnpack_sparse")), None)
        print_table(rows, f"== 1. speed-up of the sparse engine over the dense .pte, uniform width 1.0 "
                          f"({described}, {args.resolution} px, {rows[0].get('threads') if rows else '?'} thread(s); "
                          f"NCHW/sparse build: {sparse_build})")
        print("  speed-up = .pte ms / .jcwnet ms of the same pruned network; anchor = that model's unpruned .pte "
              "(density 1.0) in this run; sparse layers = convolutions run sparse / engine nodes; conversions = "
              "NHWC<->NCHW layout conversions per run; max_abs_error engine = against the torch reference in the "
              "file (checked before timing, tolerance 1e-3 x max(1, |ref|)); signal = max |ref - classifier bias|.")
        if run_rows:
            print_table(run_rows, "== 2. best joint-searched candidate (jcw search --runtime sparse) at each budget; "
                                  "anchor = the unpruned .pte of the run's model, at the run's input size")
            for row in run_rows:
                if row["section"] == "run":
                    print(f"  {row['model']}: predicted {fmt(row.get('predicted_ms'), '.4g')} ms (.pte), "
                          f"run's sparse-runtime latency {fmt(row.get('run_latency_ms'), '.4g')} ms")
        else:
            print("\n== 2. best joint-searched candidate at two budgets: skipped (no --runs given; pass "
                  "`jcw search --runtime sparse` run directories with --runs, and --budgets B1,B2 in ms)")
        failed = [r for r in rows + run_rows if r["section"] != "anchor"
                  and (r.get("pte_ms") is None or (r.get("net") and r.get("net_ms") is None))]
        errs = [r["net_err"] for r in rows + run_rows if r.get("net_err") is not None]
        print(f"\n== 3. correctness: max_abs_error of the engine against torch over {len(errs)} network(s): "
              f"max {fmt(max(errs) if errs else None, '.2e')}; .pte against torch: max "
              f"{fmt(max((r['pte_err'] for r in rows if r.get('pte_err') is not None), default=None), '.2e')}")
        if failed:
            status = 1
            print(f"  NOT MEASURED: {', '.join(r['key'] for r in failed)}")
        if not args.no_bad_input:
            sparse_source = next((r["net"] for r in rows if r.get("density") not in (None, 1.0)), None)
            if sparse_source is None:
                print("\n== 4. bad input: skipped (no network with a sparse layer was exported)")
            elif not bad_input(sparse_source, address, work):
                status = 1
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"\ndone in {time.monotonic() - started:.0f} s. Reproduce: "
          f".venv/bin/python benchmarks/bench_sparse_engine.py {argv}".rstrip())
    print("  full size: .venv/bin/python benchmarks/bench_sparse_engine.py   (local, 224 px, 3 rounds); "
          ".venv/bin/python benchmarks/bench_sparse_engine.py --device emulated --resolution 96 --rounds 2")
    return status


if __name__ == "__main__":
    os.environ.setdefault("COLUMNS", "200")
    sys.exit(main())
