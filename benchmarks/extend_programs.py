"""Add whole programs (ExecuTorch and sparse-engine) to an existing profile and measure only what is missing,
through the same ProgramPhase `jcw profile` uses — for benchmark profiles whose layer plan came from an
older plan version (which `jcw profile` refuses to extend) but whose layer labels are still the ones to use.

Reproduce the issue-10 profile (a copy of the issue-9 one at 1 thread, plus 120 sparse training programs):
    cp -r benchmarks/out/profile1t benchmarks/out/profile10
    .venv/bin/python benchmarks/extend_programs.py benchmarks/out/profile10 --programs 120 --sparse-programs 120
    .venv/bin/jcw train --profile benchmarks/out/profile10 --out benchmarks/out/profile10-predictor
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jcw.profiler import program_session, session  # noqa: E402
from jcw.profiler.store import ProfileStore  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", help="an existing profile directory (its threads and rounds are kept)")
    parser.add_argument("--programs", type=int, default=120, help="ExecuTorch training programs (as jcw profile)")
    parser.add_argument("--sparse-programs", type=int, default=120, help="sparse-engine training programs")
    parser.add_argument("--device", default="local")
    args = parser.parse_args()
    summary = session.ProfileSummary(out_dir=args.profile)
    started = time.time()
    with session.open_device(args.device) as device, ProfileStore(args.profile) as store:
        threads, rounds = store.get_meta("threads"), store.get_meta("plan_params")["rounds"]
        phase = program_session.ProgramPhase(device, store, threads=threads, rounds=rounds, seed=0, runner_args=[],
                                             summary=summary, report=lambda *a, **k: None,
                                             runtimes=("executorch", "sparse"))
        phase.plan(args.programs, args.sparse_programs)
        note = program_session.run_program_phase(phase)
    print(note or f"programs exported {summary.programs_exported}, results {summary.program_new_results}, "
                  f"failures {summary.program_new_failures}, wall {time.time() - started:.0f} s "
                  f"(device {summary.device_seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
