"""What a layer plan costs to measure, before measuring it: configurations per sample and estimated runner time.

The per-configuration time model is calibrated on a measured profile (default benchmarks/out/profile1t):
each configuration-round costs its timed repetitions (the runner's rule: at least min_reps and min_time_ms,
at most max_reps), its warm-up runs, and a fixed overhead (operator setup, weight packing, host) that is the
profile's layer-phase wall time left after those two. A plan's latencies come from the profile's saved
predictor. The stored plan is estimated too, next to what it really took, so the model's error is shown.
Reproduce: `.venv/bin/python benchmarks/bench_plan_cost.py [--budget 1600] [--rounds 5]`.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jcw import predictor  # noqa: E402
from jcw.predictor.features import as_columns, rows_to_columns  # noqa: E402
from jcw.profiler import plans  # noqa: E402
from jcw.profiler.store import ProfileStore  # noqa: E402


def runner_seconds(latency_us: np.ndarray, timing: dict) -> np.ndarray:
    """Seconds inside timed and warm-up runs of one configuration-round, by the runner's repetition rule."""
    lat = np.maximum(latency_us, 1e-3)
    reps = np.clip(np.ceil(timing["min_time_ms"] * 1e3 / lat), timing["min_reps"], timing["max_reps"])
    reps = np.minimum(reps, np.maximum(2, np.ceil(timing["max_time_ms"] * 1e3 / lat)))
    warm = np.where(lat >= timing["warmup_ms"] * 1e3, lat, timing["warmup"] * lat)
    return (reps * lat + warm) / 1e6


def predicted_us(model, rows: list[dict]) -> np.ndarray:
    out = np.empty(len(rows))
    impl = np.array([r["impl"] for r in rows], dtype=object)
    columns = as_columns(rows_to_columns(rows))
    for name in ("dense", "sparse"):
        mask = impl == name
        if mask.any():
            out[mask] = model.predict_impl({k: v[mask] for k, v in columns.items()}, name)
    return out


def print_table(title: str, samples: list[str], layers: dict[str, int], seconds: np.ndarray, rounds: int) -> None:
    """Configurations, layers and estimated minutes per sample, training and whole-plan totals."""
    samples_arr = np.array(samples, dtype=object)
    print(f"\n{title} ({rounds} rounds)")
    print(f"{'sample':<10} {'layers':>7} {'configs':>8} {'est. s/round':>13} {'est. min total':>15}")
    for sample in ("prior", "coverage", "random", "holdout", "unseen"):
        mask = samples_arr == sample
        if mask.any():
            spent = float(seconds[mask].sum())
            print(f"{sample:<10} {layers[sample]:>7} {int(mask.sum()):>8} {spent:>13.1f} {spent * rounds / 60:>15.1f}")
    training = np.array([s not in plans.HELD_OUT_SAMPLES for s in samples])
    print(f"training: {sum(v for k, v in layers.items() if k not in plans.HELD_OUT_SAMPLES)} layers, "
          f"{int(training.sum())} configurations, {seconds[training].sum() * rounds / 60:.1f} min; "
          f"whole plan {len(samples)} configurations, {seconds.sum() * rounds / 60:.1f} min")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=str(ROOT / "benchmarks/out/profile1t"))
    parser.add_argument("--predictor", default=str(ROOT / "benchmarks/out/profile1t-predictor"))
    parser.add_argument("--budget", type=int, default=plans.DEFAULT_BUDGET)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with ProfileStore(args.profile, readonly=True) as store:
        timing = store.get_meta("runner")["timing"]
        rows = store.measurements()
        stamps = [r["measured_at"] for r in store.rounds() if r["error"] is None]
    measured = np.array([r["latency_us"] for r in rows])
    wall = max(stamps) - min(stamps)
    overhead = (wall - runner_seconds(measured, timing).sum() * len(stamps) / len(rows)) / len(stamps)
    model = predictor.load(args.predictor)
    print(f"calibration on {args.profile}: {len(rows)} configurations, {len(stamps)} configuration-rounds in a "
          f"{wall:.0f} s layer phase; overhead {overhead * 1e3:.1f} ms per configuration-round")

    def layer_counts(items) -> dict[str, int]:
        return dict(Counter(sample for _, sample in {(key, sample) for key, sample in items}))

    stored_layers = layer_counts((r["config_id"].rsplit("|", 2)[0], r["sample"]) for r in rows)
    for label, latency in (("measured", measured), ("estimated from predicted latencies", predicted_us(model, rows))):
        print_table(f"stored plan, {label}", [r["sample"] for r in rows], stored_layers,
                    runner_seconds(latency, timing) + overhead, args.rounds)

    plan = plans.make_plan(args.budget, args.seed)
    plan_rows = [{**spec.to_dict(), "impl": impl, "sample": sample} for spec, impl, _, sample in plan.configurations(1)]
    print_table(f"plan version {plans.PLAN_VERSION}, budget {args.budget}, seed {args.seed}, estimated",
                [r["sample"] for r in plan_rows], {s: len(getattr(plan, s)) for s in
                                                   ("prior", "coverage", "random", "holdout", "unseen")},
                runner_seconds(predicted_us(model, plan_rows), timing) + overhead, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
