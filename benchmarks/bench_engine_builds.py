"""Two builds of the sparse engine on the same network files (issue 11): a runner change's effect on what users
deploy. Each .jcwnet is timed by an older ptebench (the anchor, e.g. built from an earlier commit) and by the one
`make runner` builds, alternating round by round on this machine, same threads and statistic (us_min of the
fastest round); the figure is current / anchor per network.

Reproduce (the anchor: `git worktree add /tmp/old <commit>`, link the virtualenv and build it there):
    git worktree add /tmp/old 1381a51 && ln -s "$PWD/.venv" /tmp/old/.venv && make -C /tmp/old runner
    .venv/bin/jcw export --model resnet18 --uniform width=0.5,density=0.1 --runtime sparse --out /tmp/r18.pte
    .venv/bin/python benchmarks/bench_engine_builds.py --anchor /tmp/old/android_harness/native/build/host/ptebench \
        --net /tmp/r18.jcwnet [--net ...] [--rounds 8] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_same_kernel import fastest  # noqa: E402
from jcw.android_harness.device import DeviceError  # noqa: E402
from jcw.android_harness.local import LocalDevice  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchor", required=True, type=Path, help="the older ptebench binary")
    parser.add_argument("--net", required=True, type=Path, action="append", help="a .jcwnet (repeatable)")
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds (default 8)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    missing = [str(p) for p in args.net if not p.is_file()]
    if missing:
        raise DeviceError(f"no such network file: {', '.join(missing)}")
    builds = {"anchor": LocalDevice(ptebench=args.anchor), "current": LocalDevice()}
    versions = {name: device.program_runner_info().get("version") for name, device in builds.items()}
    print(f"# engine builds: anchor ptebench {versions['anchor']} ({args.anchor}), current {versions['current']}; "
          f"{len(args.net)} networks, {args.rounds} alternating rounds, threads {args.threads}, us_min of the fastest",
          flush=True)
    started = time.monotonic()
    lines = [{"id": str(i), "net": str(net), "threads": args.threads} for i, net in enumerate(args.net)]
    results: dict[tuple[str, str], list[dict]] = {}
    for round_ in range(args.rounds):
        order = list(builds) if round_ % 2 == 0 else list(reversed(builds))  # neither side always goes first
        for name in order:
            for result in builds[name].run_programs(lines):
                results.setdefault((name, result["id"]), []).append(result)
    print("\n| network | anchor ms | current ms | current / anchor |")
    print("|---|---:|---:|---:|")
    ratios = []
    for i, net in enumerate(args.net):
        old, new = (fastest(results[(name, str(i))]) / 1000 for name in ("anchor", "current"))
        ratios.append(new / old)
        print(f"| {net.name} | {old:.2f} | {new:.2f} | {new / old:.3f}× |")
    print(f"\nmedian current / anchor: {statistics.median(ratios):.3f}×; took {time.monotonic() - started:.0f} s")
    for device in builds.values():
        device.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DeviceError as exc:  # a runner not built, a file missing: one sentence
        print(f"bench_engine_builds: {exc}", file=sys.stderr)
        sys.exit(3)
