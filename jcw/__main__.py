"""Entry point of the `jcw` command: each stage's `cli.register(subparsers)` adds its subcommands.

A subcommand handler returns an exit status; user mistakes surface as `UserError`-like
exceptions carrying one sentence, printed without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
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
        print(f"jcw {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
