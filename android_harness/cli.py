"""The harness's command: `jcw emulate`, an emulated phone speaking ADB for tests and dry runs.

Owns argument parsing, the startup summary and the wait for Ctrl-C; the phone itself is
android_harness.emulator. User mistakes end in one sentence and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from rich.console import Console
from rich.table import Table

EXIT_USER_ERROR = 2


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535 (0 = any free port), got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "emulate", help="run an emulated phone that speaks the ADB protocol (tests, dry runs)",
        description="Serve an emulated Android phone over ADB/TCP until Ctrl-C. Its files live in a sandbox "
                    "directory; getprop, /sys and /proc facts come from a phone description; arm64 programs "
                    "run under qemu-aarch64-static. Connect with `adb connect 127.0.0.1:PORT` or "
                    "`jcw profile --device tcp:127.0.0.1:PORT`. Shell commands run on this machine, confined "
                    "only by path rewriting, so it listens on loopback unless --allow-remote is given.")
    parser.add_argument("--port", type=_port, default=5555, help="TCP port (default 5555; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="permit a non-loopback --host (anyone who can connect runs commands here)")
    parser.add_argument("--sandbox", metavar="DIR",
                        help="directory used as the phone's '/' (default: a temporary one, removed at exit)")
    parser.add_argument("--phone", metavar="FILE", help="phone description JSON (see --print-phone)")
    parser.add_argument("--print-phone", action="store_true",
                        help="print the default phone description as JSON and exit")
    parser.add_argument("--auth", choices=("accept", "refuse", "listed"), default="accept",
                        help="accept: trust new keys like tapping Allow (default); refuse: trust nothing; "
                             "listed: trust only --authorized-keys")
    parser.add_argument("--authorized-keys", metavar="FILE",
                        help="adb_keys file (public keys, e.g. ~/.android/adbkey.pub) trusted from the start")
    faults = parser.add_argument_group("fault injection (each drop fires once)")
    faults.add_argument("--drop-after-bytes", type=_count, metavar="N",
                        help="cut the first connection that has carried N bytes")
    faults.add_argument("--drop-at-line", type=_count, metavar="N",
                        help="cut the connection right after a shell stream sends its N-th runner result line")
    faults.add_argument("--disk-full", action="store_true", help="writes under /data fail: No space left on device")
    faults.add_argument("--refuse-auth", action="store_true", help="same as --auth refuse")
    parser.add_argument("--duration", type=float, metavar="SECONDS",
                        help="stop by itself after this long (default: run until Ctrl-C)")
    parser.set_defaults(handler=run_emulate)


def run_emulate(args: argparse.Namespace) -> int:
    from jcw.android_harness.emulator import (
        DescriptionError,
        EmulatedPhone,
        EmulatorError,
        Faults,
        KeyFormatError,
        Phone,
    )
    console = Console(stderr=False)
    err = Console(stderr=True, soft_wrap=True)
    if args.print_phone:
        print(json.dumps(Phone.default().to_dict(), indent=2))
        return 0
    if args.authorized_keys is None and args.auth == "listed":
        err.print("jcw emulate: --auth listed needs --authorized-keys FILE.", highlight=False)
        return EXIT_USER_ERROR
    if args.duration is not None and args.duration <= 0:
        err.print("jcw emulate: --duration must be a positive number of seconds.", highlight=False)
        return EXIT_USER_ERROR
    try:
        phone = EmulatedPhone(
            sandbox=args.sandbox, port=args.port, host=args.host, phone=args.phone,
            auth="refuse" if args.refuse_auth else args.auth, authorized_keys=args.authorized_keys,
            faults=Faults(drop_after_bytes=args.drop_after_bytes, drop_at_line=args.drop_at_line,
                          disk_full=args.disk_full),
            allow_remote=args.allow_remote)
        phone.start()
    except OSError as exc:
        err.print(f"jcw emulate: cannot use {exc.filename}: {exc.strerror}.", highlight=False)
        return EXIT_USER_ERROR
    except (ValueError, DescriptionError, KeyFormatError, EmulatorError) as exc:
        err.print(f"jcw emulate: {str(exc).rstrip('.')}.", highlight=False)
        return EXIT_USER_ERROR

    # SIGTERM and Ctrl-C only append to a list, which takes no lock (a handler that took one could
    # deadlock against the main thread it interrupts) and cannot be swallowed like an exception.
    # A SIGINT that a background script ignores stays ignored.
    stop_requests: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _: stop_requests.append(signum))
    previous_int = None
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous_int = signal.signal(signal.SIGINT, lambda signum, _: stop_requests.append(signum))
    try:
        table = Table(title="emulated phone", show_header=False)
        table.add_row("address", phone.address)
        table.add_row("serial", phone.serial)
        table.add_row("model", f"{phone.phone.props.get('ro.product.manufacturer', '')} {phone.phone.model}")
        table.add_row("cores", ", ".join(f"{c['max_khz'] // 1000} MHz" for c in phone.phone.cores))
        table.add_row("sandbox", str(phone.root))
        table.add_row("auth", phone.auth.mode)
        armed = [f for f in ("drop_after_bytes", "drop_at_line") if getattr(phone.faults, f) is not None]
        if phone.faults.disk_full:
            armed.append("disk_full")
        table.add_row("faults", ", ".join(armed) or "none")
        console.print(table)
        console.print(f"serving {phone.address} (adb connect {phone.address}); Ctrl-C to stop", highlight=False)
        sys.stdout.flush()
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while not stop_requests and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)
        phone.stop()
    summary = Table(title="emulated phone stopped", show_header=False)
    summary.add_row("connections served", str(phone.connections_served))
    summary.add_row("faults fired", ", ".join(phone.faults.fired) or "none")
    console.print(summary)
    return 0
