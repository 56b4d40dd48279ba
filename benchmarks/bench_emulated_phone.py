"""The phone path end to end on the emulated phone (issue 9): `jcw emulate` speaks the real ADB protocol
and runs the arm64 bundle (convbench + ptebench + the aarch64 ExecuTorch wheel's libraries) under
qemu-aarch64-static. A small profile (layers + whole programs at 32-48 px), `jcw train`, `jcw search`
and `jcw export` measuring the exported `.pte` through ADB. Speeds are qemu's, not a phone's: the
figures show that every step of the phone path runs and how the model-level predictor does there.

Reproduce (~10 min here; layers at 224 px are slow under qemu):
    .venv/bin/python benchmarks/bench_emulated_phone.py [--budget 40] [--programs 12] [--rounds 1]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_push import EmulatorProcess  # noqa: E402
from benchmarks.bench_whole_program import accuracy_table, jcw  # noqa: E402

FAST = ["--runner-arg=--warmup=1", "--runner-arg=--min-reps=3", "--runner-arg=--min-time-ms=5"]


def step(title: str, *argv: str) -> str:
    started = time.monotonic()
    out = jcw(*argv).stdout
    print(f"  {title}: {time.monotonic() - started:.0f} s", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--programs", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmulatorProcess(Path(tmp) / "phone") as phone:
        work = Path(tmp)
        device = f"tcp:{phone.address}"
        print(f"# emulated phone at {device} (arm64 bundle under qemu-aarch64-static)", flush=True)
        step("profile", "profile", "--device", device, "--out", work / "profile", "--budget", str(args.budget),
             "--holdout", "20", "--rounds", str(args.rounds), "--programs", str(args.programs),
             "--program-sizes", "32,48", *FAST)
        step("train", "train", "--profile", work / "profile", "--out", work / "predictor")
        card = json.loads((work / "predictor" / "card.json").read_text())
        step("search (digits)", "search", "--predictor", work / "predictor", "--model", "digits", "--accuracy",
             "digits", "--pop", "16", "--gens", "8", "--out", work / "run")
        front = json.loads((work / "run" / "front.json").read_text())
        pick = max(c["latency_ms"] for c in front)
        step("export + measure over ADB", "export", "--run", work / "run", "--pick", repr(pick + 1e-9),
             "--out", work / "digits.pte", "--rounds", "3", "--json")
        report = json.loads((work / "digits.export.json").read_text())
        bundle = sorted(p.name for p in (work / "phone").rglob("ptebench*"))
    accuracy_table(card)
    print(f"\nbundle on the phone: {', '.join(bundle)}; threads {card.get('threads')}")
    print(f"digits candidate measured through ADB on {report['device']}: measured {report['measured_ms']:.3f} ms, "
          f"predicted {report['predicted_ms']:.3f} ms, measured / predicted {report['ratio']:.3f}× "
          f"(latency_ms = us_min of the fastest round, both sides)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("COLUMNS", "200")
    sys.exit(main())
