"""The arm64 bundle as the tests that run it under qemu need it: built (`make -C android_harness/native android`;
tests never build it) and `qemu-aarch64-static` present, else the test fails saying what to do."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from jcw.android_harness import runner
from jcw.android_harness.device import DeviceError


def arm64_bundle() -> Path:
    try:
        bundle = runner.android_bundle_dir()
    except DeviceError as exc:
        pytest.fail(f"{exc} (tests never build the bundle themselves)")
    if shutil.which(runner.QEMU_AARCH64) is None:
        pytest.fail("qemu-aarch64-static is missing; install qemu-user-static (make setup does).")
    return bundle
