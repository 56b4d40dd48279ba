"""Is the unseen-architecture figure limited by what the profile measured, or by what the features can say?
(issue 11). On a profile's unseen-architecture layers: the predictor trained as `jcw train` trains it (the
anchor), the same predictor given half of those very layers besides its training set and scored on the other
half, and the predictor trained on a share of its own training layers — each printed as a ratio against the
anchor scored on the same layers, next to the label floor.

Reproduce (a profile from `jcw profile --device local --out DIR`, which measures the unseen set by default):
    .venv/bin/python benchmarks/bench_unseen_ceiling.py --profile DIR [--profile DIR2 ...] [--splits 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_predictor import subsample  # noqa: E402
from jcw.predictor import evaluation, pipeline  # noqa: E402
from jcw.predictor.errors import PredictorError  # noqa: E402
from jcw.predictor.models import LatencyPredictor  # noqa: E402
from jcw.profiler.store import StoreError  # noqa: E402

SHARES = (0.5, 0.75)


def within10(model: LatencyPredictor, rows: list[dict]) -> float:
    return evaluation.metrics(evaluation.predict_rows(model, rows), evaluation.latencies(rows))["within10"]


def layer_count(rows: list[dict]) -> int:
    return len({evaluation.layer_key(r) for r in rows})


def halves(rows: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """The rows split in two by layer (a layer's dense and sparse rows stay together)."""
    first = subsample(rows, layer_count(rows) // 2, seed)
    chosen = {evaluation.layer_key(r) for r in first}
    return first, [r for r in rows if evaluation.layer_key(r) not in chosen]


def run(profile: Path, splits: int) -> None:
    data = pipeline.read_profile(profile, None)
    training, unseen = data["training"], data["unseen"]
    if not unseen:
        print(f"{profile}: the profile has no unseen-architecture layers (profiled with --unseen 0)")
        return
    started = time.monotonic()
    anchor = LatencyPredictor("hybrid").fit(training)
    floor = evaluation.label_floor(unseen)["within10"]
    base = within10(anchor, unseen)
    print(f"\n== {profile}: {layer_count(training)} training layers, {len(unseen)} unseen-architecture "
          f"configurations (label floor ±10 % {100 * floor:.1f} %)")
    print("| arm | scored on | ±10 % | anchor on the same rows | ratio |")
    print("|---|---|---:|---:|---:|")
    print(f"| anchor: the profile's training layers | all unseen | {100 * base:.1f} % | {100 * base:.1f} % | 1.00 |")
    for seed in range(splits):
        given, scored = halves(unseen, seed)
        model = LatencyPredictor("hybrid").fit(training + given)
        ours, theirs = within10(model, scored), within10(anchor, scored)
        print(f"| + half of the unseen layers themselves (split {seed}) | the other half | {100 * ours:.1f} % | "
              f"{100 * theirs:.1f} % | {ours / theirs:.2f} |")
    for share in SHARES:
        model = LatencyPredictor("hybrid").fit(subsample(training, round(share * layer_count(training)), 0))
        ours = within10(model, unseen)
        print(f"| {100 * share:.0f} % of the training layers | all unseen | {100 * ours:.1f} % | {100 * base:.1f} % | "
              f"{ours / base:.2f} |")
    print(f"({time.monotonic() - started:.0f} s)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, action="append", required=True, help="a profile directory")
    parser.add_argument("--splits", type=int, default=2, help="random halves of the unseen layers (default 2)")
    args = parser.parse_args()
    print("reproduce: .venv/bin/python benchmarks/bench_unseen_ceiling.py " + " ".join(sys.argv[1:]), flush=True)
    for profile in args.profile:
        try:
            run(profile, max(1, args.splits))
        except (StoreError, PredictorError) as exc:
            print(f"bench_unseen_ceiling: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
