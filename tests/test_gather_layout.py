"""The im2col gather in front of every sparse k×k layer is our own loop, compiled into both runners: convbench
(which measures the profile's labels) and ptebench (the sparse engine users deploy). Its speed depended on where
the linker put it: at 32 bytes past a 64-byte boundary the same code ran gather-bound layers up to 1.66x slower
on an Intel Xeon, and the engine ran such layers up to 1.45x slower than the profile said (benchmarks/RESULTS.md,
issue 11). Every build must start it on a 64-byte boundary, so all of them lay its loops out alike.

Reads the symbol tables with binutils' nm (build-essential, which `make setup` installs); the host runners and
the arm64 bundle must be built (`make runner`, `make runner-android`), never here."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from jcw.android_harness import runner

GATHER = "im2col_row"
ALIGNMENT = 64


def gather_offset(binary: Path) -> int:
    """Bytes past a 64-byte boundary at which `binary`'s gather starts."""
    listing = subprocess.run(["nm", str(binary)], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, f"nm could not read {binary}: {listing.stderr.strip()}"
    addresses = [int(fields[0], 16) for fields in (line.split() for line in listing.stdout.splitlines())
                 if len(fields) == 3 and fields[2] == GATHER]
    assert len(addresses) == 1, f"{binary} has {len(addresses)} symbols named {GATHER} (stripped?)"
    return addresses[0] % ALIGNMENT


def built(find) -> Path:
    try:
        return find()
    except runner.DeviceError as exc:  # a missing build must fail loudly, not skip
        pytest.fail(str(exc))


def test_both_host_runners_start_the_gather_on_a_64_byte_boundary() -> None:
    assert gather_offset(built(runner.host_binary)) == 0
    assert gather_offset(built(runner.host_ptebench)) == 0


@pytest.mark.slow
def test_both_arm64_runners_start_the_gather_on_a_64_byte_boundary() -> None:
    bundle = built(runner.android_bundle_dir)
    for name in ("convbench", "ptebench"):
        assert gather_offset(bundle / name) == 0, name


def test_the_offset_is_read_from_the_symbol_table(tmp_path: Path) -> None:
    """The check itself can fail: a binary without the symbol is an assertion, not a pass."""
    source = tmp_path / "other.c"
    source.write_text("int main(void) { return 0; }\n")
    program = tmp_path / "other"
    subprocess.run(["cc", "-o", str(program), str(source)], check=True, timeout=60)
    with pytest.raises(AssertionError, match="0 symbols named im2col_row"):
        gather_offset(program)
