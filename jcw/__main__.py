"""Entry point of the `jcw` command: each stage's `cli.register(subparsers)` adds its subcommands.

A subcommand handler returns an exit status; user mistakes surface as `UserError`-like
exceptions carrying one sentence, printed without a traceback. Exit statuses: 0 done, 1 the work ran
but its results failed (`jcw measure`, `jcw profile`), 2 one sentence about bad input, a device or a
file (an OSError, a damaged database or too little memory that a command did not phrase itself is
phrased here), 130 interrupted, 141 the reader of the output went away.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sqlite3
import sys
from typing import NoReturn

from jcw import UserError

STAGES = ("profiler.cli", "android_harness.cli", "predictor.cli", "search.cli", "jcw.demo")


class _OneSentenceParser(argparse.ArgumentParser):
    """A usage mistake is a user error like any other: one sentence pointing at --help, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


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


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean 'the user asked for something impossible': one sentence, no traceback."""
    types: list[type[BaseException]] = [UserError]
    for module_name, names in (("profiler.layerspec", ("LayerSpecError",)), ("profiler.store", ("StoreError",)),
                               ("profiler.cliargs", ("OutputPathError",)),
                               ("android_harness.device", ("DeviceError",)),
                               ("predictor.errors", ("PredictorError",)), ("search.errors", ("SearchError",))):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        types.extend(getattr(module, n) for n in names if hasattr(module, n))
    return tuple(types)


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports every stage: Ctrl-C can land here too
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("jcw: interrupted.", file=sys.stderr)
        return 130
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print(f"jcw {args.command}: interrupted.", file=sys.stderr)  # profile says itself what it saved
        return 130
    except BrokenPipeError:  # `jcw predict --json | head`: the reader is gone, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush stays silent
        return 141
    except _user_error_types() as exc:
        print(f"jcw {args.command}: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the command did not check itself: still one sentence
        from profiler.cliargs import os_error_sentence
        print(f"jcw {args.command}: {os_error_sentence(exc)}.", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"jcw {args.command}: this machine ran out of memory; ask for less (a smaller --pop, --input-shape "
              f"or --budget).", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as exc:  # the profile store phrases its own; this is the net below it
        print(f"jcw {args.command}: a database file is damaged ({_one_line(str(exc))}); restore it from a backup "
              f"or make it again.", file=sys.stderr)
        return 2


def _one_line(text: str) -> str:
    """A message as one line: an error that spans lines would read as several sentences."""
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
