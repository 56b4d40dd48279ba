"""`python -m jcw.android_harness.emulator ARGS` = `jcw emulate ARGS`, without loading the other stages."""
import argparse
import sys

from jcw.android_harness import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jcw.android_harness.emulator")
    subparsers = parser.add_subparsers(dest="command")
    cli.register(subparsers)
    args = parser.parse_args(["emulate", *(sys.argv[1:] if argv is None else argv)])
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
