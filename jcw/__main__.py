"""Entry point of the `jcw` command: each stage's `cli.register(subparsers)` adds its subcommands.

A subcommand handler returns an exit status; mistakes and failures surface as exceptions carrying one
sentence, printed without a traceback. Exit statuses (README.md, "Errors, limits and what is kept"):
EXIT_OK, EXIT_RESULTS_FAILED (the work ran but its results failed: `jcw measure`, `jcw profile`),
EXIT_USAGE (bad input: arguments, files, a damaged database, too little memory for what was asked),
EXIT_DEVICE (the device or its runner failed or could not be reached), EXIT_INTERRUPTED (Ctrl-C) and
EXIT_BROKEN_PIPE (the reader of the output went away).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sqlite3
import sys
from typing import NoReturn

STAGES = ("jcw.profiler.cli", "jcw.profiler.lab_cli", "jcw.android_harness.cli", "jcw.predictor.cli",
          "jcw.predictor.lab_train", "jcw.search.cli", "jcw.demo")

EXIT_OK = 0
EXIT_RESULTS_FAILED = 1
EXIT_USAGE = 2
EXIT_DEVICE = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE

#: The stages' error types and the status each ends `jcw` with, most specific first: a device error that is
#: the user's mistake (a malformed address, a file that is not a program) is bad input, any other a device
#: failure. A stage that is not installed contributes none.
_ERROR_STATUSES = (
    ("jcw.android_harness.device", "DeviceUsageError", EXIT_USAGE),
    ("jcw.profiler.program_session", "PteError", EXIT_USAGE),
    ("jcw.android_harness.device", "DeviceError", EXIT_DEVICE),
    ("jcw.search.errors", "DeviceMeasureError", EXIT_DEVICE),
    ("jcw", "UserError", EXIT_USAGE),
    ("jcw.profiler.layerspec", "LayerSpecError", EXIT_USAGE),
    ("jcw.profiler.store", "StoreError", EXIT_USAGE),
    ("jcw.profiler.cliargs", "OutputPathError", EXIT_USAGE),
    ("jcw.predictor.errors", "PredictorError", EXIT_USAGE),
    ("jcw.search.errors", "SearchError", EXIT_USAGE),
)


class _OneSentenceParser(argparse.ArgumentParser):
    """A usage mistake is a user error like any other: one sentence pointing at --help, EXIT_USAGE."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneSentenceParser(
        prog="jcw", description="Profile a phone's convolution latency, learn a latency predictor from it, "
                                "and search per-layer channel width x weight density against it.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in STAGES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(subparsers)
    return parser


def _error_statuses() -> list[tuple[type[BaseException], int]]:
    """(error type, exit status) of every installed stage, in _ERROR_STATUSES' order."""
    statuses = []
    for module_name, name, status in _ERROR_STATUSES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        if hasattr(module, name):
            statuses.append((getattr(module, name), status))
    return statuses


def exit_status_of(exc: BaseException) -> int | None:
    """The status a stage's one-sentence error ends `jcw` with; None for an exception no stage phrased."""
    return next((status for error_type, status in _error_statuses() if isinstance(exc, error_type)), None)


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports every stage: Ctrl-C can land here too
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("jcw: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        return int(args.handler(args) or EXIT_OK)
    except KeyboardInterrupt:
        print(f"jcw {args.command}: interrupted.", file=sys.stderr)  # profile says itself what it saved
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `jcw predict --json | head`: the reader is gone, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush stays silent
        return EXIT_BROKEN_PIPE
    except OSError as exc:  # a file the command did not check itself: still one sentence
        from jcw.profiler.cliargs import os_error_sentence
        print(f"jcw {args.command}: {os_error_sentence(exc)}.", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print(f"jcw {args.command}: this machine ran out of memory; ask for less (a smaller --pop, --input-shape "
              f"or --budget).", file=sys.stderr)
        return EXIT_USAGE
    except sqlite3.DatabaseError as exc:  # the profile store phrases its own; this is the net below it
        print(f"jcw {args.command}: a database file is damaged ({_one_line(str(exc))}); restore it from a backup "
              f"or make it again.", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        status = exit_status_of(exc)
        if status is None:
            raise  # a bug, not a sentence someone phrased: the traceback is what a report needs
        print(f"jcw {args.command}: {_one_line(str(exc))}", file=sys.stderr)
        return status


def _one_line(text: str) -> str:
    """A message as one line: an error that spans lines would read as several sentences."""
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
