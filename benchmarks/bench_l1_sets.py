"""L1 set conflicts of the sparse kernel (issue 11, feature schema 5): the same sparse 1x1 convolution on maps
of 60 to 72 px. Its SpMM reads one row of the input per input channel, rows h·w·4 bytes apart; on a 64x64 map
(16 KiB apart) every row starts at the same offset of a 4 KiB L1 set period and they all compete for one set.

Prints ps per MAC per map size and each as a ratio against the median of the same channel count's sizes whose
rows spread over every set (the anchor, measured in the same run), with the feature the predictor computes
(`features.rows_per_l1_set`).

Reproduce:
    .venv/bin/python benchmarks/bench_l1_sets.py [--device local|tcp:HOST:PORT] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jcw.predictor.features import rows_per_l1_set  # noqa: E402
from jcw.profiler.layerspec import LayerSpec  # noqa: E402

CHANNELS = (144, 288, 576)
MAPS = (60, 62, 63, 64, 65, 66, 68, 72)
COUT = 45


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="local")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")

    from jcw.profiler import session

    device = session.open_device(args.device)
    started = time.monotonic()
    lines = []
    for cin in CHANNELS:
        for h in MAPS:
            spec = LayerSpec(op="conv", cin=cin, cout=COUT, k=1, h=h, w=h, density=1.0)
            lines.append((spec, {"id": f"c{cin}h{h}", **spec.to_dict(), "impl": "sparse", "threads": 1}))
    fastest: dict[str, float] = {}
    build = "?"
    for _ in range(args.rounds):
        for result in device.run_batch([line for _, line in lines]):
            if "error" in result:
                raise SystemExit(f"runner error: {result['error']}")
            build = result.get("xnnpack", build)
            fastest[result["id"]] = min(fastest.get(result["id"], float("inf")), result["us_min"])
    device.close()

    print(f"# sparse 1x1 -> {COUT} channels, density 1, 1 thread, {args.rounds} rounds (us_min of the fastest), "
          f"{args.device}, XNNPACK {build}\n")
    print("| input channels | map | row bytes | rows per L1 set | µs | ps/MAC | ratio to anchor |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    worst = []
    for cin in CHANNELS:
        mine = [(spec, fastest[line["id"]]) for spec, line in lines if spec.cin == cin]
        per_mac = {spec.h: us * 1e6 / spec.macs for spec, us in mine}
        per_set = {spec.h: float(rows_per_l1_set(np.array([float(cin)]), np.array([spec.h * spec.w * 4]))[0])
                for spec, _ in mine}
        # The anchor: maps whose rows spread over all 64 sets (no more rows per set than that forces).
        spread = [per_mac[h] for h in MAPS if per_set[h] <= cin / 64 + 1e-9]
        anchor = statistics.median(spread)
        for spec, us in mine:
            print(f"| {cin} | {spec.h}×{spec.w} | {spec.h * spec.w * 4} | {per_set[spec.h]:.0f} | {us:.1f} | "
                  f"{per_mac[spec.h]:.1f} | {per_mac[spec.h] / anchor:.2f}× |")
        worst.append((cin, per_mac[64] / anchor))
    print("\n64x64 (all rows in one set) against the anchor: "
          + ", ".join(f"{cin} channels {ratio:.2f}×" for cin, ratio in worst))
    print(f"took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
