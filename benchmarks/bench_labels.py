"""Labels of issue 11 on one device (this machine unless --device says otherwise): (a) repeatability,
settle rounds against more rounds everywhere;
(b) warm against cold weights, judged by whole-program (.pte) latency.

(a) Two independent profiles, A and B, of the same plan (same seed), one after the other. Each is measured
    in --base-rounds rounds (default 5) without settling; copies of it then settle (`--settle-cap`), are
    extended to 8 rounds and, with fewer base rounds, to the default 5 (the anchor). For each setting: the share
    of configurations whose labels (us_min of the fastest clean round) in A and B agree within ±5%, their
    p90 difference, and the profile time the setting cost (wall seconds: its base rounds plus its own step).
(b) Profiles with whole programs, layers timed with warm and with cold weights (past the last-level cache,
    and over each --cold-bytes size; same seed, same plan, same exported programs), each trained into a
    predictor. Model-level error against the measured .pte latency (the fastest of all profiles' measurements
    of each program, and each profile's own): the sum of each program's dense layer predictions (the layer
    labels alone, no program model) over every program, and the program model on held-out and unseen
    programs; plus the cold / warm ratio of the layer labels themselves.
Every comparison uses us_min of the fastest round on both sides, on the same device and thread count.

Reproduce (quiet machine, ~40 min at the defaults here):
    .venv/bin/python benchmarks/bench_labels.py [--budget 400] [--programs 40] [--cold-bytes 4M] [--keep DIR]
On a phone (the question this host cannot settle: warm or cold labels where the last-level cache is smaller
than the networks): .venv/bin/python benchmarks/bench_labels.py --device usb:SERIAL --only b --keep DIR
Smoke check (a few minutes): .venv/bin/python benchmarks/bench_labels.py --budget 40 --programs 4 --program-sizes 32,48
Kept (b) runs judged together (seconds): .venv/bin/python benchmarks/bench_labels.py --rejudge DIR --rejudge DIR2
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from jcw.android_harness.device import DeviceError  # noqa: E402
from jcw.profiler import labels, session  # noqa: E402
from jcw.profiler.store import ProfileStore  # noqa: E402

BASE_ROUNDS, MORE_ROUNDS = 5, 8
TOLERANCE = labels.SETTLE_TOLERANCE


def pct(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f}%"


def agreement(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Share of configurations (in both) whose two labels are within ±5% of each other, and the p90 of |a/b - 1|."""
    common = sorted(set(a) & set(b))
    diffs = np.array([abs(a[c] / b[c] - 1.0) for c in common if a[c] > 0 and b[c] > 0])
    if not len(diffs):
        return {"n": 0, "within5": float("nan"), "p90": float("nan")}
    return {"n": len(diffs), "within5": float(np.mean(diffs <= TOLERANCE)), "p90": float(np.percentile(diffs, 90))}


def label_map(directory: Path, max_round: int | None = None) -> dict[str, float]:
    """config_id -> label, from every round or only rounds below `max_round` (the label's own rule)."""
    with ProfileStore(directory, readonly=True) as store:
        if max_round is None:
            return {m["config_id"]: m["latency_us"] for m in store.measurements()}
        rows = [r for r in store.rounds() if r["round"] < max_round and r["error"] is None and r["us_min"]]
    by_config: dict[str, list[tuple[float, int]]] = {}
    for row in rows:
        by_config.setdefault(row["config_id"], []).append((row["us_min"], row["drift"]))
    return {c: min([v for v, d in values if not d] or [v for v, _ in values]) for c, values in by_config.items()}


def profile(directory: Path, args: argparse.Namespace, **kw) -> session.ProfileSummary:
    return session.profile(args.device_handle, directory, budget=args.budget, seed=args.seed, threads=args.threads,
                           runner_args=args.runner_arg, **kw)


def repeatability(args: argparse.Namespace, work: Path) -> None:
    few = args.base_rounds
    anchor_name = f"{BASE_ROUNDS} rounds (anchor: the default)"
    names = ([f"{few} rounds"] if few != BASE_ROUNDS else []) + \
        [anchor_name, f"{few} rounds + settle (cap {args.settle_cap})", f"{MORE_ROUNDS} rounds"]
    few_name, settle_name, more_name = names[0], names[-2], names[-1]
    settings: dict[str, dict[str, dict[str, float]]] = {name: {} for name in names}
    costs: dict[str, list[float]] = {name: [] for name in names}
    settle_counts: list[dict[str, int]] = []

    def setting_dir(replica: str, name: str) -> Path:
        return work / f"repeat-{replica}-{names.index(name)}"

    for replica in "AB":
        paths = {name: setting_dir(replica, name) for name in names}
        first = profile(paths[few_name], args, rounds=few, settle_cap=0)
        for name in names[1:]:
            shutil.copytree(paths[few_name], paths[name])
        # every other setting continues the same first rounds: its cost is theirs plus its own step
        steps = {few_name: None}
        if few != BASE_ROUNDS:
            steps[anchor_name] = profile(paths[anchor_name], args, rounds=BASE_ROUNDS, settle_cap=0)
        steps[settle_name] = profile(paths[settle_name], args, rounds=few, settle_cap=args.settle_cap)
        steps[more_name] = profile(paths[more_name], args, rounds=MORE_ROUNDS, settle_cap=0)
        for name in names:
            costs[name].append(first.wall_seconds + (steps[name].wall_seconds if steps.get(name) else 0.0))
            settings[name][replica] = label_map(paths[name])
        settle_counts.append(steps[settle_name].settle)
        extra = "; ".join(f"{name} +{step.wall_seconds:.0f} s" for name, step in steps.items() if step)
        print(f"  profile {replica}: {first.configurations} configurations, {few} rounds in {first.wall_seconds:.0f} "
              f"s; {extra} (settle: {steps[settle_name].settle_results} results, {steps[settle_name].settle})",
              flush=True)
    print(f"\n(a) repeatability on {args.device_handle.address}, threads {args.threads}, budget {args.budget}: two "
          f"profiles A and B of the same plan, labels within ±{TOLERANCE:.0%}")
    print("| setting | configurations | within ±5% | p90 |diff| | profile time (A, B) | within ±5% vs anchor "
          "| time vs anchor |")
    print("|---|---|---|---|---|---|---|")
    anchor = agreement(settings[anchor_name]["A"], settings[anchor_name]["B"])
    anchor_time = statistics.mean(costs[anchor_name])
    for name, maps in settings.items():
        result = agreement(maps["A"], maps["B"])
        ratio = result["within5"] / anchor["within5"] if anchor["within5"] else float("nan")
        seconds = statistics.mean(costs[name])
        print(f"| {name} | {result['n']} | {pct(result['within5'])} | {pct(result['p90'])} | "
              f"{', '.join(f'{c:.0f} s' for c in costs[name])} | {ratio:.3f}× | {seconds / anchor_time:.2f}× |")
    for replica, counts in zip("AB", settle_counts):
        print(f"settle, profile {replica}: {counts.get('disagreeing_base')} configurations disagreed after {few} "
              f"rounds, {counts.get('settled_configurations')} re-measured with {counts.get('extra_rounds')} extra "
              f"rounds, {counts.get('still_disagreeing')} still disagree at the cap")
    # The same data read as fewer rounds: what each round buys, for free.
    for rounds in range(2, MORE_ROUNDS + 1):
        result = agreement(*(label_map(setting_dir(replica, more_name), rounds) for replica in "AB"))
        print(f"  first {rounds} rounds of the {MORE_ROUNDS}-round profiles: {pct(result['within5'])} within ±5%")
    print("target: ≥ 98% within ±5%")


def program_errors(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    ratio = predicted / measured
    rel = np.abs(ratio - 1.0)
    bias = float(np.median(ratio))
    # Within ±10 % once the median bias is divided out: how well the predictions follow the programs one to
    # another, which a machine that drifts between speeds (this profile's programs timed in its slow hour)
    # cannot move.
    unbiased = np.abs(ratio / bias - 1.0)
    return {"n": len(rel), "within10": float(np.mean(rel <= 0.10)), "median": float(np.median(rel)),
            "p90": float(np.percentile(rel, 90)), "bias": bias, "within10_unbiased": float(np.mean(unbiased <= 0.10))}


def print_program_table(rows: list[tuple[str, str, str, dict[str, float]]]) -> None:
    """rows of (labels, judged against, predictor, program_errors); the first row of each (judge, predictor) is
    the anchor of the last column."""
    print("| labels | judged against | predictor | programs | within ±10% | median |err| | p90 |err| | "
          "median pred/meas | within ±10% after that bias | median |err| vs anchor |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    anchors: dict[tuple[str, str], float] = {}
    for arm, judge, name, e in rows:
        anchor = anchors.setdefault((judge, name), e["median"])
        ratio = e["median"] / anchor if anchor else float("nan")
        print(f"| {arm} | {judge} | {name} | {e['n']} | {pct(e['within10'])} | {pct(e['median'])} | {pct(e['p90'])} "
              f"| {e['bias']:.3f} | {pct(e['within10_unbiased'])} | {ratio:.2f}× |")


def rejudge(directories: list[str]) -> None:
    """Judge the kept (b) profiles of several runs together (no measuring): every `weights-*` profile with its
    predictor, against the fastest measurement of each program over all of them."""
    from jcw import predictor

    found = {f"{Path(d).name}/{p.name}": p for d in directories for p in sorted(Path(d).glob("weights-*"))
             if p.is_dir() and not p.name.endswith("-predictor") and (p.parent / f"{p.name}-predictor").is_dir()}
    found = dict(sorted(found.items(), key=lambda item: not item[0].endswith("/weights-warm")))  # warm: the anchor
    if len(found) < 2:
        sys.exit("bench_labels: --rejudge needs at least two kept (b) profiles with their predictors "
                 "(DIR/weights-*, DIR/weights-*-predictor)")
    measured = {}
    for name, directory in found.items():
        with ProfileStore(directory, readonly=True) as store:
            measured[name] = {p["program_id"]: p for p in store.program_measurements()}
    programs = sorted(set.intersection(*(set(m) for m in measured.values())))
    first = measured[next(iter(found))]
    fastest = np.array([min(measured[name][p]["latency_us"] for name in found) for p in programs]) / 1e3
    specs = [first[p]["spec"] for p in programs]
    held = np.array([first[p]["sample"] != "train" for p in programs])
    print(f"(b) rejudged: {len(found)} profiles, {len(programs)} programs all of them measured; truth: each program's "
          f"fastest us_min over all of them")
    rows = []
    for name, directory in found.items():
        predicted = predictor.load(directory.parent / f"{directory.name}-predictor").predict_programs(specs)
        own = np.array([measured[name][p]["latency_us"] for p in programs]) / 1e3
        print(f"  {name}: its own measurements of the programs / the fastest: {np.median(own / fastest):.3f}")
        rows.append((name, "fastest of all", "sum of dense layers",
                     program_errors(predicted["layers_dense_ms"], fastest)))
        rows.append((name, "fastest of all", "program model (held-out + unseen)",
                     program_errors(predicted["latency_ms"][held], fastest[held])))
    print_program_table(sorted(rows, key=lambda row: row[2]))


def label_arms(args: argparse.Namespace) -> dict[str, tuple[str, int | None]]:
    """{arm name: (weights mode, cold rotation bytes)}: warm, cold past the last-level cache, and cold over each
    --cold-bytes size."""
    arms = {"warm": ("warm", None)}
    if not args.no_llc_cold:
        arms["cold"] = ("cold", None)
    for size in args.cold_bytes:
        arms[f"cold-{size}"] = ("cold", labels.parse_size(size))
    return arms


def warm_vs_cold(args: argparse.Namespace, work: Path) -> None:
    from jcw import predictor
    from jcw.predictor import pipeline

    arms = label_arms(args)
    dirs = {arm: work / f"weights-{arm}" for arm in arms}
    seconds = {}
    for arm, (mode, cold_bytes) in arms.items():
        if arm != "warm" and (dirs["warm"] / "programs").is_dir():  # the same .pte files: exported once
            shutil.copytree(dirs["warm"] / "programs", dirs[arm] / "programs")
        started = time.monotonic()
        summary = profile(dirs[arm], args, rounds=BASE_ROUNDS, weights=mode, cold_bytes=cold_bytes,
                          settle_cap=args.settle_cap, programs=args.programs, program_sizes=args.program_sizes)
        seconds[arm] = time.monotonic() - started
        if summary.programs_note:
            sys.exit(f"bench_labels: the {arm} profile measured no programs: {summary.programs_note}")
        print(f"  {arm} profile: {summary.configurations} configurations, {summary.programs} programs, "
              f"{seconds[arm]:.0f} s (the warm one exports the programs the others copy)", flush=True)
    stores = {arm: ProfileStore(directory, readonly=True) for arm, directory in dirs.items()}
    layer = {arm: {m["config_id"]: m for m in store.measurements()} for arm, store in stores.items()}
    measured = {arm: {p["program_id"]: p for p in store.program_measurements()} for arm, store in stores.items()}
    for store in stores.values():
        store.close()
    print(f"\n(b) layer labels by weights mode on {args.device_handle.address}, threads {args.threads}, budget "
          f"{args.budget}, programs {args.programs}; profile time " + ", ".join(
              f"{arm} {seconds[arm]:.0f} s ({seconds[arm] / seconds['warm']:.2f}× warm)" for arm in arms))
    for arm in arms:
        if arm == "warm":
            continue
        groups: dict[str, list[float]] = {}
        for config in sorted(set(layer["warm"]) & set(layer[arm])):
            row = layer["warm"][config]
            groups.setdefault(f"{row['op']} {row['impl']}", []).append(
                layer[arm][config]["latency_us"] / row["latency_us"])
        print(f"{arm} / warm layer label, median (p10-p90): " + "; ".join(
            f"{name} {np.median(r):.3f} ({np.percentile(r, 10):.2f}-{np.percentile(r, 90):.2f}, n {len(r)})"
            for name, r in sorted(groups.items())))
    programs = sorted(set.intersection(*(set(m) for m in measured.values())))
    fastest = np.array([min(measured[arm][p]["latency_us"] for arm in arms) for p in programs]) / 1e3
    specs = [measured["warm"][p]["spec"] for p in programs]
    sample = np.array([measured["warm"][p]["sample"] for p in programs], dtype=object)
    held = sample != "train"
    # Two judges: the fastest measurement of each program over all profiles (one statistic for every arm), and
    # each profile's own measurements, made in the same hour as its layer labels (a machine that drifts
    # between speeds moves both together).
    rows = []
    for arm in arms:
        out = work / f"weights-{arm}-predictor"
        pipeline.train(dirs[arm], out, seed=args.seed)
        predicted = predictor.load(out).predict_programs(specs)
        own = np.array([measured[arm][p]["latency_us"] for p in programs]) / 1e3
        for judge, truth in (("fastest of all", fastest), ("its own profile", own)):
            for name, values, mask in (("sum of dense layers", predicted["layers_dense_ms"],
                                        np.ones(len(held), bool)),
                                       ("program model (held-out + unseen)", predicted["latency_ms"], held)):
                if mask.any():
                    rows.append((arm, judge, name, program_errors(values[mask], truth[mask])))
    print_program_table(rows)
    print("truth: each .pte's us_min of the fastest round (of all profiles, or of the profile itself); "
          "anchor: warm labels")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="local",
                        help="the device to profile: local (default), usb:SERIAL, a bare serial or tcp:HOST:PORT")
    parser.add_argument("--budget", type=int, default=400, help="training layers per profile (default 400)")
    parser.add_argument("--programs", type=int, default=session.DEFAULT_PROGRAMS,
                        help=f"training programs of the (b) profiles (default {session.DEFAULT_PROGRAMS})")
    parser.add_argument("--program-sizes", default=None, metavar="R,R",
                        help="program input sizes (default the profile's 128-224; 32,48 for a quick check)")
    parser.add_argument("--settle-cap", type=int, default=labels.DEFAULT_SETTLE_CAP)
    parser.add_argument("--base-rounds", type=int, default=BASE_ROUNDS,
                        help=f"(a): rounds before settling, 2 to {BASE_ROUNDS} (default {BASE_ROUNDS}; fewer adds "
                             f"that setting beside the {BASE_ROUNDS}-round anchor)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("a", "b"), default=None, help="run one part only")
    parser.add_argument("--runner-arg", action="append", default=[], metavar="FLAG",
                        help="a layer-runner timing flag, e.g. --runner-arg=--min-time-ms=10 (repeatable)")
    parser.add_argument("--cold-bytes", action="append", default=[], metavar="SIZE",
                        help="(b) also a cold profile whose rotation spans SIZE (e.g. 4M; repeatable)")
    parser.add_argument("--no-llc-cold", action="store_true",
                        help="(b) without the cold profile past the last-level cache (hours where that is 480 MB)")
    parser.add_argument("--rejudge", action="append", default=[], metavar="DIR",
                        help="measure nothing: judge the (b) profiles kept in each DIR together (repeatable)")
    parser.add_argument("--keep", metavar="DIR", help="keep the profiles in DIR (must be empty or absent)")
    args = parser.parse_args()
    if args.budget < 8 or args.programs < 0 or not 0 <= args.settle_cap <= labels.MAX_SETTLE_CAP:
        parser.error("--budget must be at least 8, --programs at least 0, --settle-cap from 0 to "
                     f"{labels.MAX_SETTLE_CAP}")
    if not 2 <= args.base_rounds <= BASE_ROUNDS:
        parser.error(f"--base-rounds must be from 2 to {BASE_ROUNDS}, got {args.base_rounds}")
    try:
        args.program_sizes = [int(v) for v in args.program_sizes.split(",")] if args.program_sizes else None
    except ValueError:
        parser.error(f"--program-sizes must be whole numbers separated by commas, got {args.program_sizes!r}")
    try:
        [labels.parse_size(size) for size in args.cold_bytes]
    except ValueError as exc:
        parser.error(str(exc))
    args.runner_arg = [token for flag in args.runner_arg
                       for token in (flag.split("=", 1) if "=" in flag else [flag])]  # the runner's own tokens
    reproduce = " ".join(sys.argv[1:])
    if args.rejudge:
        print(f"bench_labels; reproduce with: .venv/bin/python benchmarks/bench_labels.py {reproduce}", flush=True)
        rejudge(args.rejudge)
        return 0
    try:
        args.device_handle = session.open_device(args.device)
        cpu = args.device_handle.runner_info().get("cpu")
    except DeviceError as exc:
        sys.exit(f"bench_labels: {str(exc).rstrip('.')}.")
    print(f"bench_labels on {args.device_handle.address} ({cpu}); reproduce with: "
          f".venv/bin/python benchmarks/bench_labels.py {reproduce}".rstrip(), flush=True)
    started = time.monotonic()
    with args.device_handle, tempfile.TemporaryDirectory(prefix="bench-labels-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        if args.keep and work.exists() and any(work.iterdir()):
            sys.exit(f"bench_labels: --keep {work} is not empty; the benchmark needs fresh profiles.")
        work.mkdir(parents=True, exist_ok=True)
        if args.only in (None, "a"):
            repeatability(args, work)
        if args.only in (None, "b"):
            warm_vs_cold(args, work)
    print(f"\nbench_labels took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
