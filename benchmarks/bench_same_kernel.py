"""Same library, same kernel (issue 9): one convolution timed as a single-layer ExecuTorch program
(`ptebench`, the XNNPACK delegate inside ExecuTorch's runtime) and as a `convbench` line (the same
XNNPACK, called directly), on the same device, thread count and statistic (us_min of the fastest round).

The ratio .pte / convbench is the whole-program overhead one layer carries (delegate entry, layout
work, runtime); it should be close to 1 for large layers and grow for tiny ones.

`--sparse` does the same for the sparse engine (issue 11): one pruned k×k convolution as a single-layer network
file (`ptebench`, the engine's im2col gather + SpMM, the segments path) against convbench's sparse line (the
same gather and SpMM). Both runners compile the same gather; the ratio says whether the engine runs it as fast
as the profile measured it (runner 0.2.4 / ptebench 0.3.1 give the gather one code alignment in both).

Reproduce:
    .venv/bin/python benchmarks/bench_same_kernel.py [--threads T] [--rounds 3] [--device local|tcp:HOST:PORT]
    .venv/bin/python benchmarks/bench_same_kernel.py --sparse --threads 1 --rounds 3 [--convbench PATH --ptebench PATH]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jcw.profiler import programs  # noqa: E402
from jcw.profiler.layerspec import LayerSpec  # noqa: E402

#: About 20 shapes across the space the kit profiles: 1x1, 3x3, strided, depthwise 3x3/5x5, stems, FC.
SHAPES = [
    ("conv", 3, 32, 3, 2, 224), ("conv", 3, 64, 7, 2, 224), ("conv", 32, 64, 1, 1, 112),
    ("conv", 64, 64, 3, 1, 56), ("conv", 64, 128, 3, 2, 56), ("conv", 64, 256, 1, 1, 56),
    ("conv", 128, 128, 3, 1, 28), ("conv", 128, 512, 1, 1, 28), ("conv", 256, 256, 3, 1, 14),
    ("conv", 256, 1024, 1, 1, 14), ("conv", 512, 512, 3, 1, 7), ("conv", 512, 2048, 1, 1, 7),
    ("conv", 96, 24, 1, 1, 56), ("conv", 144, 32, 1, 1, 28), ("conv", 40, 240, 1, 1, 28),
    ("dwconv", 32, 32, 3, 1, 112), ("dwconv", 144, 144, 3, 2, 56), ("dwconv", 240, 240, 5, 1, 14),
    ("dwconv", 512, 512, 3, 1, 14), ("conv", 1280, 1000, 1, 1, 1),
]


#: Pruned k×k convolutions from gather-bound (few outputs, low density: the im2col copy is most of the time) to
#: SpMM-bound (many outputs): (cin, cout, k, stride, h, density).
SPARSE_SHAPES = [
    (19, 5, 3, 1, 8, 0.05), (10, 8, 3, 1, 28, 0.1), (26, 6, 3, 1, 24, 0.2), (45, 2, 3, 1, 32, 0.05),
    (96, 3, 3, 1, 20, 0.1), (13, 13, 3, 2, 56, 0.5), (64, 51, 3, 2, 56, 0.05), (3, 16, 5, 1, 128, 0.5),
    (3, 32, 7, 2, 224, 0.3), (230, 51, 3, 1, 18, 0.3), (128, 128, 3, 1, 28, 0.1), (64, 64, 3, 1, 56, 0.1),
    (256, 256, 3, 2, 28, 0.05), (272, 14, 3, 1, 71, 0.15),
]


def program_of(spec: LayerSpec) -> dict:
    node = {"name": "conv", "op": "conv", "cout": spec.cout, "k": spec.k, "stride": spec.stride, "pad": spec.pad,
            "groups": spec.cin if spec.op == "dwconv" else 1}
    if spec.density < 1.0:
        node["density"] = spec.density
    return programs.validate({"name": "single", "input": [1, spec.cin, spec.h, spec.w], "nodes": [node]})


def export_each(specs: list[LayerSpec], directory: Path, suffix: str, export) -> list[Path]:
    """Each layer as a one-layer program file (`export(spec, path)`: a .pte or a .jcwnet) in `directory`."""
    paths = [directory / f"conv{i}{suffix}" for i in range(len(specs))]
    for spec, path in zip(specs, paths):
        export(program_of(spec), path)
    return paths


def fastest(results: list[dict]) -> float:
    bad = [r for r in results if "error" in r]
    if bad:
        raise SystemExit(f"runner error: {bad[0]['error']}")
    return min(r["us_min"] for r in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="local")
    parser.add_argument("--threads", type=int, default=None, help="default: ExecuTorch's default on the device")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shapes", type=int, default=None, help="use the first N shapes")
    parser.add_argument("--sparse", action="store_true",
                        help="pruned k×k convolutions on the sparse engine (.jcwnet) against convbench's sparse line")
    parser.add_argument("--convbench", help="--device local: a convbench other than the built one (an older build)")
    parser.add_argument("--ptebench", help="--device local: a ptebench other than the built one")
    args = parser.parse_args()

    from jcw.profiler import program_build, session

    if args.convbench or args.ptebench:
        if args.device != "local":
            raise SystemExit("--convbench and --ptebench replace the local runners only (--device local)")
        from jcw.android_harness.local import LocalDevice
        device = LocalDevice(binary=args.convbench, ptebench=args.ptebench)
    else:
        device = session.open_device(args.device)
    if args.sparse:
        return sparse_main(args, device)
    threads = args.threads or int(device.program_runner_info().get("default_threads") or 1)
    specs = [LayerSpec(op=op, cin=cin, cout=cout, k=k, stride=s, h=h, w=h)
             for op, cin, cout, k, s, h in SHAPES[:args.shapes or len(SHAPES)]]
    print(f"# same kernel: {len(specs)} convolutions on {device.address}, threads {threads}, "
          f"{args.rounds} rounds, statistic us_min of the fastest round", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        ptes = export_each(specs, Path(tmp), ".pte", program_build.export_pte)
        rows = []
        for i, (spec, pte) in enumerate(zip(specs, ptes)):
            conv_line = {"id": f"c{i}", **spec.to_dict(), "impl": "dense", "threads": threads}
            pte_line = {"id": f"p{i}", "pte": str(pte), "threads": threads}
            conv = [list(device.run_batch([conv_line]))[0] for _ in range(args.rounds)]
            pte_results = [list(device.run_programs([pte_line]))[0] for _ in range(args.rounds)]
            rows.append((spec, fastest(conv), fastest(pte_results), conv[0].get("xnnpack", "?")))
    print("\n| layer | convbench us | .pte us | .pte / convbench |")
    print("|---|---|---|---|")
    for spec, conv_us, pte_us, _build in rows:
        label = f"{spec.op} {spec.cin}->{spec.cout} k{spec.k} s{spec.stride} @{spec.h}"
        print(f"| {label} | {conv_us:.1f} | {pte_us:.1f} | {pte_us / conv_us:.3f}× |")
    ratios = [pte / conv for _, conv, pte, _ in rows]
    big = [pte / conv for _, conv, pte, _ in rows if conv >= 200]
    print(f"\nconvbench XNNPACK build: {rows[0][3]}")
    print(f"median .pte / convbench over {len(rows)} shapes: {statistics.median(ratios):.3f}×  "
          f"(min {min(ratios):.3f}×, max {max(ratios):.3f}×)")
    if big:
        print(f"median over the {len(big)} layers of ≥ 200 µs: {statistics.median(big):.3f}×")
    print(f"took {time.monotonic() - started:.0f} s")
    device.close()
    return 0


def sparse_main(args: argparse.Namespace, device) -> int:
    """Each pruned k×k layer as a convbench sparse line and as a one-layer network file on the engine."""
    from jcw.profiler import program_net

    threads = args.threads or 1
    specs = [LayerSpec(op="conv", cin=cin, cout=cout, k=k, stride=s, h=h, w=h, density=d)
             for cin, cout, k, s, h, d in SPARSE_SHAPES[:args.shapes or len(SPARSE_SHAPES)]]
    versions = (device.runner_info().get("version"), device.program_runner_info().get("version"))
    print(f"# same kernel, sparse: {len(specs)} pruned k×k convolutions on {device.address}, threads {threads}, "
          f"{args.rounds} rounds, us_min of the fastest round; convbench {versions[0]}, ptebench {versions[1]}",
          flush=True)
    started = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        nets = export_each(specs, Path(tmp), ".jcwnet", program_net.export_net)
        for i, (spec, net) in enumerate(zip(specs, nets)):
            conv_line = {"id": f"c{i}", **spec.to_dict(), "impl": "sparse", "threads": threads}
            net_line = {"id": f"n{i}", "net": str(net), "threads": threads, "sparse_path": "segments"}
            conv, engine = [], []
            for _ in range(args.rounds):  # interleaved, so a slow minute weighs on both
                conv += list(device.run_batch([conv_line]))
                engine += list(device.run_programs([net_line]))
            rows.append((spec, fastest(conv), fastest(engine)))
    print("\n| layer | density | convbench us | engine us | engine / convbench |")
    print("|---|---:|---:|---:|---:|")
    for spec, conv_us, net_us in rows:
        print(f"| conv {spec.cin}->{spec.cout} k{spec.k} s{spec.stride} @{spec.h} | {spec.density:g} | {conv_us:.1f} | "
              f"{net_us:.1f} | {net_us / conv_us:.3f}× |")
    ratios = [net / conv for _, conv, net in rows]
    print(f"\nmedian engine / convbench over {len(rows)} layers: {statistics.median(ratios):.3f}×  "
          f"(min {min(ratios):.3f}×, max {max(ratios):.3f}×); above 1.15×: {sum(r > 1.15 for r in ratios)}")
    print(f"took {time.monotonic() - started:.0f} s")
    device.close()
    return 0


if __name__ == "__main__":
    from jcw.android_harness.device import DeviceError
    try:
        sys.exit(main())
    except DeviceError as exc:  # a runner not built, a phone gone: one sentence, as jcw says it
        print(f"bench_same_kernel: {exc}", file=sys.stderr)
        sys.exit(3)
