"""The device lab (issue 13): the same three small profiles of three emulated phones, one after another (the
anchor: three `jcw profile` runs, as the kit did before the lab), then all at once on one host (`jcw profile
--device A --device B --device C`), then all at once on a local Ray cluster of a head and two worker hosts
(`jcw lab profile --address`). Each phone is `jcw emulate` in its own process with its own serial and model.

The emulated phones run the arm64 runner under qemu on this machine's cores, so the phones' own work
competes with the host's: the parallel ratio is bounded by the cores (2 here), not by the phones. Host CPU
per phone (the jcw processes' user + system time, the emulators excluded) says what a real lab scales to:
a real phone computes on its own cores, so one host core drives about device time / host CPU phones.

Reproduce (~3 min here):
    .venv/bin/python benchmarks/bench_lab.py [--budget 12] [--no-ray]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHONES = (("LABA01", "Lab Alpha"), ("LABB02", "Lab Beta"), ("LABC03", "Lab Gamma"))
FAST = ["--runner-arg=--warmup=0", "--runner-arg=--min-reps=1", "--runner-arg=--max-reps=1",
        "--runner-arg=--min-time-ms=0", "--runner-arg=--check-samples=0"]


def start_emulator(workdir: Path, serial: str, model: str, env: dict) -> tuple[subprocess.Popen, str]:
    description = workdir / f"{serial}.json"
    description.write_text(json.dumps({"serial": serial, "props": {"ro.product.model": model,
                                                                    "ro.serialno": serial}}))
    process = subprocess.Popen([sys.executable, "-m", "jcw.android_harness.emulator", "--port", "0", "--sandbox",
                                str(workdir / serial), "--phone", str(description)], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    for line in process.stdout:
        if line.startswith("serving "):
            return process, f"tcp:{line.split()[1]}"
    raise RuntimeError(f"the emulated phone {serial} did not start")


def timed(env: dict, *argv: str) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall s, CPU s of the command's own processes, result) of one jcw command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "jcw", *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"jcw {' '.join(argv[:3])} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done


def serve(env: dict, log: Path, *args: str) -> subprocess.Popen:
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "jcw", "lab", "serve", *args], cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while "serving" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"jcw lab serve did not start:\n{log.read_text()}")
        time.sleep(0.3)
    return process


def stop_host(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # what the node left behind
    except ProcessLookupError:
        pass


def configurations(stdout: str) -> int:
    """Planned configurations summed over the per-phone table's rows."""
    total = 0
    for line in stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if len(cells) >= 8 and cells[1].startswith("LAB") and cells[4].isdigit():
            total += int(cells[4])
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=12)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray cluster run")
    args = parser.parse_args()
    flags = ["--budget", str(args.budget), "--rounds", "1", "--holdout", "2", "--unseen", "0", "--programs", "0",
             "--sparse-programs", "0", "--settle-cap", "0", *FAST]
    with tempfile.TemporaryDirectory(prefix="jcw-bench-lab-") as tmp:
        workdir = Path(tmp)
        home = workdir / "home"
        home.mkdir()
        env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "COLUMNS": "200",
               "ANDROID_USER_HOME": str(home / ".android"), "RAY_USAGE_STATS_ENABLED": "0"}
        emulators = [start_emulator(workdir, serial, model, env) for serial, model in PHONES]
        devices = [address for _, address in emulators]
        hosts: list[subprocess.Popen] = []
        try:
            for device in devices:  # the bundle goes to each phone once, outside the timed runs
                timed(env, "profile", "--device", device, "--out", str(workdir / "warm" / device[-5:]),
                      "--budget", "1", "--holdout", "0", "--unseen", "0", "--rounds", "1", "--programs", "0",
                      "--sparse-programs", "0", "--settle-cap", "0", *FAST)
            sequential = [timed(env, "profile", "--device", device, "--out", str(workdir / "seq" / str(i)), *flags)
                          for i, device in enumerate(devices)]
            seq_wall = sum(wall for wall, _, _ in sequential)
            seq_cpu = sum(cpu for _, cpu, _ in sequential)
            par_wall, par_cpu, par = timed(env, "profile", *(a for d in devices for a in ("--device", d)),
                                           "--out", str(workdir / "par"), *flags)
            planned = configurations(par.stdout)
            print(f"three emulated phones, --budget {args.budget} (3 x {planned // 3} configurations), "
                  f"2-core VM shared with other work:")
            print(f"  sequential, 3 x jcw profile (anchor): {seq_wall:6.1f} s wall, host CPU {seq_cpu:5.1f} s")
            print(f"  one host, parallel workers:           {par_wall:6.1f} s wall, host CPU {par_cpu:5.1f} s  "
                  f"-> {seq_wall / par_wall:.2f}x faster than the anchor")
            if not args.no_ray:
                port = free_port()
                address = f"127.0.0.1:{port}"
                started = time.monotonic()
                hosts.append(serve(env, workdir / "head.log", "--head", "--port", str(port)))
                hosts.append(serve(env, workdir / "h1.log", "--address", address, "--device", devices[0],
                                   "--device", devices[1]))
                hosts.append(serve(env, workdir / "h2.log", "--address", address, "--device", devices[2]))
                cluster_s = time.monotonic() - started
                ray_wall, _, _ = timed(env, "lab", "profile", "--address", address, "--out", str(workdir / "ray"),
                                       *flags)
                print(f"  Ray, head + 2 hosts (started in {cluster_s:.0f} s, not counted): {ray_wall:6.1f} s wall "
                      f"-> {seq_wall / ray_wall:.2f}x faster than the anchor")
            per_phone = seq_wall / 3
            print(f"  per phone alone: {per_phone:.1f} s wall, host CPU {seq_cpu / 3:.1f} s (the rest is the phone's "
                  f"own work, here qemu on the same cores)")
            print(f"  expected on real phones: parallel wall ~ the slowest phone's {per_phone:.0f} s, i.e. ~3x for "
                  f"three; one host core keeps ~{per_phone / max(seq_cpu / 3, 1e-9):.0f} such phones busy")
        finally:
            for host in reversed(hosts):
                stop_host(host)
            for process, _ in emulators:
                process.send_signal(signal.SIGINT)
                try:
                    process.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.communicate()
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
