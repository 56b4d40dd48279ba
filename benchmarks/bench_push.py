"""Push throughput to the emulated phone over loopback, against a raw TCP copy of the same bytes.

Anchor (same run): the same file sent over a plain loopback TCP socket into a file, no protocol.
Figures: adb-shell (the kit's client) push MB/s, and Debian's adb push MB/s, each as a ratio
to the anchor. Reproduce: .venv/bin/python benchmarks/bench_push.py [--mb 16] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adb_shell.adb_device import AdbDeviceTcp  # noqa: E402
from adb_shell.auth.keygen import keygen  # noqa: E402
from adb_shell.auth.sign_pythonrsa import PythonRSASigner  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class EmulatorProcess:
    """The emulated phone in its own process, as a phone is its own machine (no shared GIL)."""

    def __init__(self, sandbox: Path):
        self.sandbox = sandbox
        self.data_dir = sandbox / "data" / "local" / "tmp"

    def __enter__(self) -> EmulatorProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "jcw.android_harness.emulator", "--port", "0",
                                      "--sandbox", str(self.sandbox)], cwd=REPO, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "COLUMNS": "200"})
        for line in self.proc.stdout:
            if line.startswith("serving "):
                self.address = line.split()[1]
                self.host, port = self.address.rsplit(":", 1)
                self.port = int(port)
                return self
        raise RuntimeError("the emulated phone did not start")

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            # The figures are already printed; a slow shutdown must not turn them into a failure.
            print("note: the emulated phone took over 30 s to stop after Ctrl-C; killed it", file=sys.stderr)
            self.proc.kill()
            self.proc.communicate()


def raw_socket_copy(source: Path, target: Path) -> float:
    """Seconds to send source over loopback TCP into target (the anchor)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def receive() -> None:
        conn, _ = listener.accept()
        with conn, open(target, "wb") as out:
            while chunk := conn.recv(1 << 20):
                out.write(chunk)

    receiver = threading.Thread(target=receive)
    receiver.start()
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock, open(source, "rb") as f:
        sock.sendfile(f)
    receiver.join()
    elapsed = time.perf_counter() - start
    listener.close()
    return elapsed


def adb_cli_push(adb: str, phone: EmulatorProcess, source: Path, home: Path) -> float | None:
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "ANDROID_ADB_SERVER_PORT": str(_free_port())}
    try:
        subprocess.run([adb, "start-server"], env=env, check=True, capture_output=True, timeout=30)
        subprocess.run([adb, "connect", phone.address], env=env, capture_output=True, timeout=30)
        for _ in range(50):
            state = subprocess.run([adb, "-s", phone.address, "get-state"], env=env, capture_output=True,
                                   text=True, timeout=30).stdout.strip()
            if state == "device":
                break
            time.sleep(0.1)
        start = time.perf_counter()
        subprocess.run([adb, "-s", phone.address, "push", str(source), "/data/local/tmp/bench_cli.bin"],
                       env=env, check=True, capture_output=True, timeout=300)
        return time.perf_counter() - start
    except subprocess.SubprocessError as exc:
        print(f"  (adb push not measured: {exc})", file=sys.stderr)
        return None
    finally:
        subprocess.run([adb, "kill-server"], env=env, capture_output=True, timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=16, help="file size in MiB (default 16)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is reported (default 3)")
    args = parser.parse_args()
    if args.mb < 1 or args.rounds < 1:
        print("bench_push: --mb and --rounds must be at least 1.", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="jcw-bench-push-") as tmp:
        tmp_path = Path(tmp)
        source = tmp_path / "payload.bin"
        source.write_bytes(os.urandom(args.mb * 1024 * 1024))
        size_mb = source.stat().st_size / 1e6
        keygen(str(tmp_path / "adbkey"))
        signer = PythonRSASigner.FromRSAKeyPath(str(tmp_path / "adbkey"))
        raw, kit, cli = [], [], []
        with EmulatorProcess(tmp_path / "phone") as phone:
            device = AdbDeviceTcp(phone.host, phone.port, default_transport_timeout_s=60)
            device.connect(rsa_keys=[signer], auth_timeout_s=5)
            adb = shutil.which("adb")
            for _ in range(args.rounds):  # interleaved so load changes hit both alike
                raw.append(raw_socket_copy(source, tmp_path / "raw_copy.bin"))
                start = time.perf_counter()
                device.push(str(source), "/data/local/tmp/bench.bin", read_timeout_s=300)
                kit.append(time.perf_counter() - start)
                if adb:
                    seconds = adb_cli_push(adb, phone, source, tmp_path / "home")
                    if seconds is not None:
                        cli.append(seconds)
            device.close()
            assert (phone.data_dir / "bench.bin").stat().st_size == source.stat().st_size
    anchor = size_mb / statistics.median(raw)
    print(f"push of {size_mb:.1f} MB over loopback, median of {args.rounds} rounds")
    print(f"  anchor  raw TCP socket copy        {anchor:8.1f} MB/s   ratio 1.000")
    kit_rate = size_mb / statistics.median(kit)
    print(f"  adb-shell push -> emulated phone  {kit_rate:8.1f} MB/s   ratio {kit_rate / anchor:.3f}")
    if cli:
        cli_rate = size_mb / statistics.median(cli)
        print(f"  adb (Debian) push -> emulated phone {cli_rate:6.1f} MB/s   ratio {cli_rate / anchor:.3f}"
              "  (includes adb process start)")
    print(f"reproduce: .venv/bin/python benchmarks/bench_push.py --mb {args.mb} --rounds {args.rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
