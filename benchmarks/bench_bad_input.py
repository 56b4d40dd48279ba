"""Bad input on every `jcw` command (issue 14): how many bad inputs per command end in exactly one
sentence (non-zero exit, no traceback), and how many lose data (change a profile, predictor or run the
user had, store a failure that is not the layer's as final, or lose a finished search front).
Target: every bad input one sentence, none loses data.

The table of bad inputs is tests/test_fuzz_cli.py's CASES (damaged, empty and foreign profiles, a
profile held by another run, runner limits, sizes no machine holds, unwritable and 300-character output
paths, malformed runs), plus four that need a process to be stopped or raced: Ctrl-C in a long search,
a runner option that fails every line, two profiles into one directory, and a phone that never allows
USB debugging.
Reproduce: `.venv/bin/python benchmarks/bench_bad_input.py [--verbose]` (about 3 minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from jcw.__main__ import EXIT_DEVICE, EXIT_USAGE  # noqa: E402
from test_fuzz_cli import CASES, FAST, NOTICES, Outcome, World, build_world, jcw, run_case, tree_hash  # noqa: E402


def _one_sentence(proc_status: int, err: str, command: str, expected: int | None = None) -> tuple[bool, str]:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(NOTICES)]
    ok = (proc_status not in (0, None) and (expected is None or proc_status == expected) and "Traceback" not in err
          and len(lines) == 1 and lines[0].startswith(f"jcw {command}: "))
    return ok, (lines[-1] if lines else "")[:300]


def interrupted_search(world: World) -> tuple[str, Outcome]:
    out = world.root / "interrupted_run"
    proc = subprocess.Popen([sys.executable, "-m", "jcw", "search", "--predictor", str(world.predictor), "--model",
                             "digits", "--pop", "8", "--gens", "1000000", "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not out.is_dir() and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(6)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    ok, line = _one_sentence(proc.returncode, err, "search", 130)
    try:
        kept = len(json.loads((out / "front.json").read_text())) > 0
    except (OSError, ValueError):
        kept = False
    return "search", Outcome(ok, not kept, '' if ok and kept else line, sentence=line)


def systematic_failure(world: World) -> tuple[str, Outcome]:
    from jcw.profiler.store import ProfileStore
    out = world.root / "tolerance0"
    proc = jcw("profile", "--device", "local", "--out", out, "--budget", "4", "--programs", "0", *FAST,
               "--runner-arg=--tolerance=0")
    ok, line = _one_sentence(proc.returncode, proc.stderr, "profile", EXIT_DEVICE)  # the runner failed every line
    with ProfileStore(out, readonly=True) as store:
        stored_as_final = len(store.errors())
    return "profile", Outcome(ok, stored_as_final > 0, '' if ok and not stored_as_final else line, sentence=line)


def concurrent_profiles(world: World) -> tuple[str, Outcome]:
    from jcw.profiler.profile_lock import lock_holder
    out = world.root / "raced"
    argv = ["profile", "--device", "local", "--out", str(out), "--budget", "400", "--programs", "0", *FAST]
    first = subprocess.Popen([sys.executable, "-m", "jcw", *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (lock_holder(out) or {}).get("pid") != first.pid:
            time.sleep(0.05)
        time.sleep(1.0)
        first.send_signal(signal.SIGSTOP)  # hold still: the store must not move while it is compared
        before = tree_hash(out)
        second = jcw(*argv)
        changed = tree_hash(out) != before
        ok, line = _one_sentence(second.returncode, second.stderr, "profile", EXIT_USAGE)
    finally:
        first.send_signal(signal.SIGCONT)
        first.kill()
        first.wait()
    return "profile", Outcome(ok, changed, '' if ok and not changed else line, sentence=line)


def unauthorized_phone(world: World) -> tuple[str, Outcome]:
    from jcw.android_harness.emulator import EmulatedPhone
    home = world.root / "home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "JCW_ADB_AUTH_S": "3"}
    with EmulatedPhone(sandbox=world.root / "phone", port=0, auth="refuse") as phone:
        proc = subprocess.run([sys.executable, "-m", "jcw", "profile", "--device", f"tcp:127.0.0.1:{phone.port}",
                               "--out", str(world.root / "never_phone"), "--budget", "4"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
    ok, line = _one_sentence(proc.returncode, proc.stderr, "profile", EXIT_DEVICE)
    said_waiting = proc.stderr.startswith(NOTICES)
    return "profile", Outcome(ok and said_waiting, (world.root / "never_phone").exists(),
                              '' if ok and said_waiting else line, sentence=line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", action="store_true", help="print every case's sentence")
    args = parser.parse_args()
    rows: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # tried, one sentence, lost data, skipped
    failures = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="jcw-bad-input-") as tmp:
        world = build_world(Path(tmp))
        try:
            results = []
            for case in CASES:
                outcome = run_case(world, case)
                results.append((case.command, case.name, outcome))
            for extra in (interrupted_search, systematic_failure, concurrent_profiles, unauthorized_phone):
                command, outcome = extra(world)
                results.append((command, extra.__name__.replace("_", "-"), outcome))
        finally:
            world.close()
    for command, name, outcome in results:
        row = rows[command]
        if outcome.skipped:
            row[3] += 1
            continue
        row[0] += 1
        row[1] += outcome.one_sentence
        row[2] += outcome.lost_data
        if not outcome.one_sentence or outcome.lost_data:
            failures.append(f"{command} {name}: {outcome.detail}")
        if args.verbose:
            print(f"{command:8} {name:32} {'ok' if outcome.one_sentence else 'NOT ONE SENTENCE'}"
                  f"{' LOST DATA' if outcome.lost_data else ''}  {outcome.sentence[:240]}")
    print(f"\nbad inputs per command ({time.monotonic() - started:.0f} s)")
    print(f"{'command':10} {'bad inputs':>10} {'one sentence':>13} {'lose data':>10} {'skipped':>8}")
    total = [0, 0, 0, 0]
    for command in ("profile", "measure", "train", "predict", "search", "export", "devices"):
        tried, one, lost, skipped = rows.get(command, [0, 0, 0, 0])
        total = [a + b for a, b in zip(total, (tried, one, lost, skipped))]
        print(f"{command:10} {tried:>10} {one:>13} {lost:>10} {skipped:>8}")
    print(f"{'all':10} {total[0]:>10} {total[1]:>13} {total[2]:>10} {total[3]:>8}")
    for failure in failures:
        print(f"  FAILED {failure[:600]}")
    return 0 if total[1] == total[0] and total[2] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
