"""Transfer curve (issue 11): a new device's held-out accuracy against its profile budget, with and without a
known device's predictor (the prior). Prints each arm's share within ±10 % on the new device's real-network
holdout (the figure `jcw train` reports) and its ratio against the anchor: no prior, trained on the same
layers at the same budget (what `jcw train` does without --prior).

Reproduce the pair in benchmarks/RESULTS.md (prior = this host at 1 thread, new device = this host at 2
threads, both from profiles already measured, so no device time; a few minutes of fitting):

    .venv/bin/python benchmarks/bench_transfer.py --prior benchmarks/out/profile1t-predictor \\
        --new-profile benchmarks/out/profile9

Other pairs profile the new device itself with `jcw profile --prior` (the transfer plan, max budget layers,
no programs) and read the curve off the plan's prefixes, which are exactly what a smaller --budget measures:

    .venv/bin/python benchmarks/bench_transfer.py --prior P --new-device local --threads 1 \\
        --runner-arg=--xnnpack=debian --workdir /tmp/transfer-debian      # the two XNNPACK builds
    .venv/bin/python benchmarks/bench_transfer.py --prior P --new-device tcp:127.0.0.1:5555 \\
        --workdir /tmp/transfer-phone                                       # the emulated phone (jcw emulate)

Inputs are copied into a temporary directory first; the given profile and predictor are never written.
"""
from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jcw.predictor import evaluation, pipeline, priors, transfer  # noqa: E402
from jcw.predictor.models import LatencyPredictor  # noqa: E402
from jcw.profiler import plans  # noqa: E402
from jcw.profiler.store import DB_NAME, ProfileStore  # noqa: E402

ANCHOR = "no prior, same layers"
DEFAULT_PLAN = "no prior, default plan"
AS_IS = "prior as is"
WITHOUT_LOCAL = "prior + residual, no local correction"


def _budgets(text: str) -> list[int]:
    return sorted({int(part) for part in text.split(",") if part.strip()})


def _layer(row: dict[str, Any]) -> tuple:
    return evaluation.layer_key(row)


def _profile_new_device(args: argparse.Namespace, prior_dir: Path, workdir: Path) -> tuple[Path, float]:
    """`jcw profile --prior` on the new device at the largest budget; returns the profile and its wall time."""
    out = workdir / "new-device-profile"
    argv = [sys.executable, "-m", "jcw", "profile", "--device", args.new_device, "--out", str(out), "--prior",
            str(prior_dir), "--budget", str(max(args.budgets)), "--programs", "0", "--rounds", str(args.rounds)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    argv += [f"--runner-arg={flag}" for flag in args.runner_arg]
    print("profiling the new device:", " ".join(argv[1:]), flush=True)
    started = time.monotonic()
    status = subprocess.run(argv, cwd=ROOT).returncode
    if status != 0:
        sys.exit(f"bench_transfer: jcw profile exited {status}")
    return out, time.monotonic() - started


def _timed_seconds(profile: Path) -> dict[tuple, float]:
    """Kernel seconds spent on each layer over all its rounds (timed_us), a lower bound of its profile time."""
    with ProfileStore(profile, readonly=True) as store:
        spent: dict[tuple, float] = defaultdict(float)
        for row in store.rounds():
            if row.get("timed_us"):
                spent[_layer(row)] += row["timed_us"] / 1e6
    return spent


def _subsets(training: Sequence[dict[str, Any]], plan_order: list[tuple] | None, budget: int, draw: int
             ) -> dict[str, list[tuple]]:
    """The layers each arm trains on at one budget: the transfer plan's (stratified real-network layers) and,
    when the profile has random layers too, the default plan's 60/40 mix."""
    by_sample: dict[str, list[tuple]] = defaultdict(list)
    seen = set()
    for row in training:
        key = _layer(row)
        if key not in seen:
            seen.add(key)
            by_sample[row["sample"]].append(key)
    if plan_order is not None:  # the profile was planned for transfer: its prefix is what --budget N measures
        return {"transfer": plan_order[:budget]}
    rng = random.Random(f"bench-transfer:{budget}:{draw}")
    strata: dict[str, list[tuple]] = defaultdict(list)
    for key in by_sample["prior"]:
        strata[plans.transfer_stratum(key[0], key[3])].append(key)
    for keys in strata.values():
        rng.shuffle(keys)
    chosen, order = [], sorted(strata)
    while len(chosen) < budget and any(strata.values()):
        for name in order:
            if strata[name] and len(chosen) < budget:
                chosen.append(strata[name].pop())
    real = list(by_sample["prior"])
    rng.shuffle(real)
    rand = list(by_sample["random"])
    rng.shuffle(rand)
    n_real = int(round(budget * plans.PRIOR_SHARE))
    return {"transfer": chosen, "default": real[:n_real] + rand[:budget - n_real] if rand else []}


def _score(model: Any, test: Sequence[dict[str, Any]]) -> dict[str, float]:
    return evaluation.metrics(evaluation.predict_rows(model, test), evaluation.latencies(test))


def run(args: argparse.Namespace) -> int:
    print("reproduce: .venv/bin/python benchmarks/bench_transfer.py " + " ".join(sys.argv[1:]), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as scratch:
        scratch = Path(scratch)
        prior_dir = scratch / "prior"
        shutil.copytree(args.prior, prior_dir, ignore=shutil.ignore_patterns("*.png", "report.md"))
        profile_seconds = None
        if args.new_device:
            workdir = args.workdir or scratch
            workdir.mkdir(parents=True, exist_ok=True)
            profile, profile_seconds = _profile_new_device(args, prior_dir, workdir)
        else:
            profile = scratch / "new-profile"
            profile.mkdir()
            shutil.copy2(args.new_profile / DB_NAME, profile / DB_NAME)
        data = pipeline.read_profile(profile, args.threads)
        training, holdout = data["training"], data["holdout"]
        stable = evaluation.stable_rows(holdout)
        plan_order = None
        if data.get("transfer_priors"):
            with ProfileStore(profile, readonly=True) as store:
                plan_order = list(dict.fromkeys(_layer(r) for r in store.plan() if r["sample"] != "holdout"))
        prior = priors.load_prior(prior_dir, data["runner"].get("version"))
        spent = _timed_seconds(profile)
        floor = evaluation.label_floor(holdout)
        print(f"prior: {args.prior} (device {prior.loaded.card.get('device_address')}, threads "
              f"{prior.loaded.card.get('threads')}, sha256 {prior.sha256[:16]}…)")
        print(f"new device: {args.new_device or args.new_profile} (threads {data['threads']}); {len(training)} "
              f"training configurations, holdout {len(holdout)} configurations (label floor ±10% "
              f"{100 * floor['within10']:.1f}%), of which {len(stable)} with rounds agreeing ±5%")
        if profile_seconds is not None:
            print(f"profile of {max(args.budgets)} layers + holdout took {profile_seconds:.0f} s wall")
        as_is = {"holdout": _score(prior.model, holdout), "stable": _score(prior.model, stable) if stable else None}
        rows_by_layer: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
        for row in training:
            rows_by_layer[_layer(row)].append(row)
        results: dict[tuple[int, str], list[dict[str, float]]] = defaultdict(list)
        draws = 1 if plan_order is not None else args.draws
        for budget in args.budgets:
            for draw in range(draws):
                subsets = _subsets(training, plan_order, budget, draw)
                rows = [r for key in subsets["transfer"] for r in rows_by_layer[key]]
                seconds = sum(spent.get(key, 0.0) for key in subsets["transfer"])
                # (name, unfitted model, its training rows): each fitted and scored in turn below
                arms = [(ANCHOR, LatencyPredictor("auto", random_state=draw), rows)]
                if subsets.get("default"):
                    default_rows = [r for key in subsets["default"] for r in rows_by_layer[key]]
                    arms.append((DEFAULT_PLAN, LatencyPredictor("auto", random_state=draw), default_rows))
                arms += [(f"prior + {strategy}", transfer.TransferPredictor(prior, strategy, random_state=draw), rows)
                         for strategy in args.strategies]
                if args.without_local and "residual" in args.strategies:
                    arms.append((WITHOUT_LOCAL, transfer.TransferPredictor(prior, "residual", local=False,
                                                                           random_state=draw), rows))
                for name, unfitted, arm_rows in arms:
                    started = time.monotonic()
                    model = unfitted.fit(arm_rows)
                    fit_s = time.monotonic() - started
                    results[(budget, name)].append(
                        {"within10": _score(model, holdout)["within10"],
                         "stable10": _score(model, stable)["within10"] if stable else float("nan"),
                         "mape": _score(model, holdout)["mape"], "fit_s": fit_s, "kernel_s": seconds,
                         "layers": len(subsets["transfer"]), "configs": len(rows)})
                print(f"  budget {budget} draw {draw}: " + ", ".join(
                    f"{name} {100 * results[(budget, name)][-1]['within10']:.1f}%" for name, _, _ in arms), flush=True)
        _print_table(args, results, as_is, draws)
    return 0


def _print_table(args: argparse.Namespace, results: dict, as_is: dict, draws: int) -> None:
    def mean(values: list[dict[str, float]], key: str) -> float:
        return float(np.mean([v[key] for v in values]))

    print(f"\nTransfer curve, mean over {draws} draw(s); ratio = ±10% share / anchor's ({ANCHOR}) at the same budget")
    print("| new-device layers | configs | kernel s | arm | ±10% holdout | ±10% stable | MAPE | vs anchor | fit s |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    stable_text = "n/a" if as_is["stable"] is None else f"{100 * as_is['stable']['within10']:.1f}%"
    print(f"| 0 | 0 | 0 | {AS_IS} | {100 * as_is['holdout']['within10']:.1f}% | {stable_text} | "
          f"{100 * as_is['holdout']['mape']:.1f}% | | |")
    for budget in args.budgets:
        anchor = mean(results[(budget, ANCHOR)], "within10")
        for (b, name), values in results.items():
            if b != budget:
                continue
            share = mean(values, "within10")
            ratio = share / anchor if anchor > 0 else float("inf")
            print(f"| {budget} | {mean(values, 'configs'):.0f} | {mean(values, 'kernel_s'):.1f} | {name} | "
                  f"{100 * share:.1f}% | {100 * mean(values, 'stable10'):.1f}% | {100 * mean(values, 'mape'):.1f}% | "
                  f"{ratio:.2f} | {mean(values, 'fit_s'):.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", type=Path, required=True, help="the known device's predictor directory")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--new-profile", type=Path, help="an existing profile of the new device (subsampled)")
    source.add_argument("--new-device", help="profile this device now with `jcw profile --prior`")
    parser.add_argument("--budgets", type=_budgets, default=[25, 50, 100, 200, 400])
    parser.add_argument("--draws", type=int, default=3, help="subsamples per budget of an existing profile")
    parser.add_argument("--strategies", default=",".join(transfer.STRATEGIES),
                        type=lambda text: [s for s in text.split(",") if s])
    parser.add_argument("--without-local", action="store_true",
                        help="also fit the residual strategy without its local correction (predictor.transfer_local)")
    parser.add_argument("--threads", type=int, default=None, help="new device's thread count (--new-device)")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds of the new device's profile")
    parser.add_argument("--runner-arg", action="append", default=[], help="passed to jcw profile (--new-device)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the new device's profile here")
    args = parser.parse_args()
    unknown = [s for s in args.strategies if s not in transfer.STRATEGIES]
    if unknown:
        parser.error(f"--strategies: unknown strategy {unknown[0]!r}; choose from {', '.join(transfer.STRATEGIES)}")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
