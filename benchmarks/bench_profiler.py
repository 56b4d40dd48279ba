"""Profiler benchmarks of issue 2 on this machine: repeatability, measurement efficiency, throughput.

(a) the same ~200 configurations profiled twice, minutes apart, compared with our methodology
    (R rounds, per-round us_min, fastest clean round) and with the naive anchor (one round, us_median);
(b) time inside timed kernel runs / wall time of `jcw profile` at the default budget;
(c) configurations per minute, against the bare runner on the same configurations.
Reproduce: `.venv/bin/python benchmarks/bench_profiler.py` (full, quiet machine) or `--quick` (smoke).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jcw.android_harness.local import LocalDevice  # noqa: E402
from jcw.profiler import plans, session  # noqa: E402
from jcw.profiler.store import ProfileStore  # noqa: E402


def agreement(pairs: list[tuple[float, float]]) -> dict[str, float]:
    """Share of pairs within +-5% of each other, and the 90th percentile of |a/b - 1|."""
    diffs = sorted(abs(a / b - 1.0) for a, b in pairs if a > 0 and b > 0)
    if not diffs:
        return {"n": 0, "within_5pct": float("nan"), "p90": float("nan")}
    return {"n": len(diffs), "within_5pct": sum(d <= 0.05 for d in diffs) / len(diffs),
            "p90": diffs[min(len(diffs) - 1, int(0.9 * len(diffs)))]}


def by_round(store: ProfileStore, limit: int) -> dict[str, dict[int, dict]]:
    """Good rounds per configuration, for the first `limit` configurations of the plan."""
    keep = {row["config_id"] for row in store.plan()[:limit]}
    out: dict[str, dict[int, dict]] = {}
    for row in store.rounds():
        if row["error"] is None and row["config_id"] in keep:
            out.setdefault(row["config_id"], {})[row["round"]] = row
    return out


def repeatability(args: argparse.Namespace, work: Path) -> None:
    device = LocalDevice()
    dirs = [work / "repeat-a", work / "repeat-b"]
    started = []
    for index, directory in enumerate(dirs):
        if index:
            print(f"  waiting {args.gap:.0f} s so the second profile runs minutes after the first ...", flush=True)
            time.sleep(args.gap)
        started.append(time.time())
        session.profile(device, directory, budget=args.repeat_budget, seed=args.seed, rounds=args.rounds,
                        runner_args=args.runner_arg)
    stores = [ProfileStore(d) for d in dirs]
    rows = [by_round(s, args.configs) for s in stores]
    common = sorted(set(rows[0]) & set(rows[1]))
    print(f"(a) repeatability: {len(common)} configurations, profile B started "
          f"{started[1] - started[0]:.0f} s after profile A, {args.rounds} rounds each")
    anchor = agreement([(rows[0][c][0]["us_median"], rows[1][c][0]["us_median"]) for c in common])
    results = {}
    for statistic in ("us_median", "us_min"):
        single = agreement([(rows[0][c][0][statistic], rows[1][c][0][statistic]) for c in common])
        results[(statistic, "single round")] = single
        for name, aggregate in (("median of rounds", statistics.median), ("fastest round", min)):
            # bound as defaults: the closure is called within this iteration, but ruff (B023) cannot know that
            def value(store_rows: dict[int, dict], aggregate=aggregate, statistic=statistic) -> float:
                clean = [r for r in store_rows.values() if not r["drift"]] or list(store_rows.values())
                return aggregate(r[statistic] for r in clean)
            results[(statistic, name)] = agreement([(value(rows[0][c]), value(rows[1][c])) for c in common])
    print(f"  {'per-round statistic':<20}{'over rounds':<20}{'within +-5%':>12}{'p90 |diff|':>12}{'vs anchor':>11}")
    for (statistic, name), res in results.items():
        ratio = res["within_5pct"] / anchor["within_5pct"] if anchor["within_5pct"] else float("nan")
        mark = "  <- anchor (naive)" if (statistic, name) == ("us_median", "single round") else (
            "  <- ours (profile default)" if (statistic, name) == ("us_min", "fastest round") else "")
        print(f"  {statistic:<20}{name:<20}{res['within_5pct']:>12.1%}{res['p90']:>12.1%}{ratio:>10.2f}x{mark}")
    ours = results[("us_min", "fastest round")]
    print(f"  ours: {ours['within_5pct']:.1%} within +-5% (target >= 98%), p90 {ours['p90']:.1%}; "
          f"naive anchor {anchor['within_5pct']:.1%}, p90 {anchor['p90']:.1%}")
    for label, store in zip("AB", stores):
        refs = [r["us_min"] for r in store.references() if r["us_min"]]
        med = statistics.median(refs)
        flagged = len(store.drift_batches())
        print(f"  drift reference, profile {label}: {len(refs)} timings, median {med:.1f} us, "
              f"max deviation {max(abs(r / med - 1) for r in refs):.1%}, "
              f"stdev/median {statistics.pstdev(refs) / med:.1%}, drift-flagged batches {flagged} "
              f"(threshold {session.DRIFT_THRESHOLD:.0%})")


def efficiency_and_throughput(args: argparse.Namespace, work: Path) -> None:
    out = work / "efficiency"
    command = [sys.executable, "-m", "jcw", "profile", "--device", "local", "--out", str(out),
               "--budget", str(args.budget), "--seed", str(args.seed), "--programs", "0", "--threads", "1",
               *(f"--runner-arg={a}" for a in args.runner_arg)]
    started = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - started
    with ProfileStore(out) as store:
        rounds = store.rounds()
        timed = sum(r["timed_us"] or 0.0 for r in rounds) / 1e6
        plan = store.plan()
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "jcw", "--help"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    startup = time.monotonic() - started
    print(f"(b) measurement efficiency: `jcw profile --budget {args.budget}` ({len(plan)} configurations x "
          f"{session.DEFAULT_ROUNDS} rounds = {len(rounds)} results) took {wall:.1f} s wall, {timed:.1f} s inside "
          f"timed kernel runs: {timed / wall:.1%} (target >= 50%); `jcw --help` alone takes {startup:.1f} s, "
          f"without it {timed / max(wall - startup, 1e-9):.1%}")
    per_minute = len(rounds) / wall * 60
    # Anchor: the bare runner, one process, on a sample of the same configurations.
    sample = plan[:: max(1, len(plan) // args.anchor_lines)][: args.anchor_lines]
    lines = [{"id": str(i), **{k: r[k] for k in ("op", "cin", "cout", "k", "stride", "pad", "h", "w", "density",
                                                 "impl", "threads")}} for i, r in enumerate(sample)]
    device = LocalDevice()
    started = time.monotonic()
    count = sum(1 for _ in device.run_batch(lines, args.runner_arg))
    bare = count / (time.monotonic() - started) * 60
    print(f"(c) throughput: {per_minute:.0f} configuration-rounds per minute through `jcw profile` "
          f"({per_minute / session.DEFAULT_ROUNDS:.0f} configurations/min at {session.DEFAULT_ROUNDS} rounds); "
          f"bare runner on {count} of the same configurations: {bare:.0f}/min; ratio {per_minute / bare:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, short gap: a smoke check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=session.DEFAULT_ROUNDS, help="rounds per repeatability profile")
    parser.add_argument("--keep", metavar="DIR", help="keep the profiles in DIR instead of a temporary directory")
    args = parser.parse_args()
    args.runner_arg = []
    if args.quick:
        args.configs, args.repeat_budget, args.gap, args.budget, args.anchor_lines = 60, 30, 10.0, 40, 40
    else:
        args.configs, args.repeat_budget, args.gap, args.budget, args.anchor_lines = (
            200, 80, 120.0, plans.DEFAULT_BUDGET, 200)
    print(f"bench_profiler on {LocalDevice().runner_info().get('cpu')}; reproduce with: "
          f".venv/bin/python benchmarks/bench_profiler.py{' --quick' if args.quick else ''}"
          f"{f' --rounds {args.rounds}' if args.rounds != session.DEFAULT_ROUNDS else ''}")
    with tempfile.TemporaryDirectory(prefix="bench-profiler-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        if args.keep and work.exists() and any(work.iterdir()):
            sys.exit(f"bench_profiler: --keep {work} is not empty; the benchmark needs fresh profiles.")
        work.mkdir(parents=True, exist_ok=True)
        repeatability(args, work)
        efficiency_and_throughput(args, work)


if __name__ == "__main__":
    main()
