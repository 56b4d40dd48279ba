"""Whole-program latency (issue 9): how close the kit's prediction comes to the measured `.pte`.

1. Model-level accuracy on a profile's held-out programs: (a) zoo architectures at genomes never
   measured, (b) architectures no plan or zoo entry was built from — share within ±10%, median and
   p90 |error| for the whole-program model, next to the old sum-of-convolutions prediction (the
   anchor) and the label floor (odd against even rounds of the same programs).
2. ResNet-18 as `make demo` would do it: `jcw search` + `jcw export` at three budgets, the exported
   `.pte` measured on the device by the native ExecuTorch runner: measured / predicted (target 0.9–1.1).
Both sides of every comparison: same device, same thread count, latency_ms = us_min of the fastest round.

Reproduce (profile: `jcw profile --device local --out DIR --programs 120`, ~35 min here):
    .venv/bin/python benchmarks/bench_whole_program.py --profile DIR [--predictor OUT] [--skip-resnet]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = {"holdout": 0.95, "unseen": 0.90}
SET_NAMES = {"holdout": "(a) zoo architectures, unseen genomes", "unseen": "(b) unseen architectures"}


def jcw(*argv: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "jcw", *map(str, argv)], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"`jcw {' '.join(map(str, argv))}` failed: {done.stderr.strip()[-600:]}")
    return done


def pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def accuracy_table(card: dict) -> None:
    metrics = card.get("program_metrics") or {}
    print(f"\n== 1. model-level accuracy: device {card.get('device_address')}, threads {card.get('threads')}, "
          f"runtime {card.get('runtime')}; programs {metrics.get('counts')}")
    print("| set | predictor | n | within ±10% | median |err| | p90 |err| | ±10% vs anchor |")
    print("|---|---|---|---|---|---|---|")
    for sample, title in SET_NAMES.items():
        entry = metrics.get(sample)
        if not entry:
            print(f"| {title} | (no programs) | | | | | |")
            continue
        anchor = next(v for k, v in entry.items() if k.startswith("baseline"))
        for name, m in entry.items():
            if not isinstance(m, dict) or "within10" not in m:
                continue
            ratio = m["within10"] / anchor["within10"] if anchor["within10"] else float("inf")
            print(f"| {title} | {name} | {m['n']} | {pct(m['within10'])} | {pct(m['median'])} | {pct(m['p90'])} "
                  f"| {ratio:.2f}× |")
        ours = entry.get("ours", {})
        print(f"target for {sample}: ≥ {pct(TARGETS[sample])} within ±10% — "
              f"{'met' if ours.get('within10', 0) >= TARGETS[sample] else 'MISSED'} ({pct(ours.get('within10'))})")


def resnet_section(predictor: Path, work: Path, rounds: int) -> None:
    run = work / "r18"
    started = time.monotonic()
    jcw("search", "--predictor", predictor, "--model", "resnet18", "--out", run, "--seed", "0")
    front = json.loads((run / "front.json").read_text())
    latencies = sorted(c["latency_ms"] for c in front)
    picks = [latencies[int(q * (len(latencies) - 1))] for q in (0.25, 0.5, 1.0)]
    print(f"\n== 2. ResNet-18 as `make demo` would do it: {len(front)} front candidates, "
          f"predicted {latencies[0]:.2f}–{latencies[-1]:.2f} ms")
    print("| pick (ms) | predicted ms | measured ms | measured / predicted | device | threads |")
    print("|---|---|---|---|---|---|")
    ratios = []
    for i, budget in enumerate(picks):
        out = work / f"r18_{i}.pte"
        jcw("export", "--run", run, "--pick", repr(budget + 1e-9), "--out", out, "--rounds", rounds, "--json")
        report = json.loads(out.with_suffix(".export.json").read_text())
        ratios.append(report["ratio"])
        print(f"| {budget:.2f} | {report['predicted_ms']:.2f} | {report['measured_ms']:.2f} | "
              f"{report['ratio']:.3f}× | {report['device']} | {report['threads']} |")
    inside = sum(0.9 <= r <= 1.1 for r in ratios)
    print(f"{inside}/{len(ratios)} within 0.9–1.1 (search + 3 exports took {time.monotonic() - started:.0f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", type=Path, required=True)
    parser.add_argument("--predictor", type=Path, default=None, help="default: <profile>-predictor (trained if absent)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "whole_program")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds of each exported .pte")
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args()
    predictor = args.predictor or args.profile.with_name(args.profile.name + "-predictor")
    if not (predictor / "card.json").exists():
        started = time.monotonic()
        print(jcw("train", "--profile", args.profile, "--out", predictor).stdout)
        print(f"(trained in {time.monotonic() - started:.0f} s)")
    card = json.loads((predictor / "card.json").read_text())
    accuracy_table(card)
    if not args.skip_resnet:
        args.work.mkdir(parents=True, exist_ok=True)
        resnet_section(predictor, args.work, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
