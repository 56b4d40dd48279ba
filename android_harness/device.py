"""The Device interface every measuring backend implements, and the errors it raises.

A device knows its facts, runs batches of layer plan lines (convbench) and of ExecuTorch program
lines (ptebench), yielding result lines (the runner contracts) as they arrive.
"""
from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from typing import Any


class DeviceError(Exception):
    """A problem with a device, phrased as one sentence for the user."""


class DeviceUsageError(DeviceError):
    """A device named or configured wrongly (an address that does not parse, a bad JCW_ADB_AUTH_S, an ADB key
    or device list on this host that cannot be used): the user's to fix, so `jcw` exits with it as bad input
    rather than as a device failure."""


class DeviceNotFound(DeviceError):
    """No device answers at the given address or serial."""


class DeviceDisconnected(DeviceError):
    """The connection dropped; the run may be resumed after reconnecting."""


class RunnerCrashed(DeviceError):
    """The runner process died before reporting every plan line of a batch."""


class Device(abc.ABC):
    """One place where convbench runs: this machine, a USB phone or a TCP phone."""

    #: Stable user-facing address: "local", "usb:<serial>" or "tcp:<host>:<port>".
    address: str

    @abc.abstractmethod
    def facts(self) -> dict[str, Any]:
        """Device facts (CPU, cores, frequencies, and for phones props, thermals, battery)."""

    @abc.abstractmethod
    def runner_info(self) -> dict[str, Any]:
        """The runner's header object (the value of the first line's "runner" key)."""

    @abc.abstractmethod
    def run_batch(self, plan_lines: Iterable[dict[str, Any]],
                  runner_args: Iterable[str] = ()) -> Iterator[dict[str, Any]]:
        """Run plan lines; yield each result line as soon as the runner reports it.

        The header line is not yielded. When the runner dies mid-batch the results
        already yielded stand, and RunnerCrashed (or DeviceDisconnected) is raised
        so the caller can re-run only the unreported lines.
        """

    def program_runner_info(self) -> dict[str, Any]:
        """The .pte runner's header object: {"name": "ptebench", "version", "executorch",
        "default_threads", "cpu", "arch", "cores", ...}."""
        raise DeviceError(f"The device {self.address} cannot run ExecuTorch programs.")

    def run_programs(self, lines: Iterable[dict[str, Any]],
                     runner_args: Iterable[str] = ()) -> Iterator[dict[str, Any]]:
        """Time ExecuTorch programs or jcw network files with ptebench; yield each result line as it arrives.

        A line is {"id": str, "pte": host path, "threads": int (0 = ExecuTorch's default),
        optional "input_file": host path of raw little-endian float32, "profile_ops": bool}, or
        {"id", "net": host path of a .jcwnet, "threads"} for the sparse network engine.
        Results are {"id", "runtime": "executorch", "threads", "us_min", "us_median", ...} (for "net"
        lines "runtime": "sparse" plus "sparse_layers", "layers", "conversions", "max_abs_error",
        "xnnpack_sparse": android_harness/native/NETFILE.md) or {"id", "error"}; the header is not
        yielded. Crashes and dropped links behave as in run_batch.
        """
        raise DeviceError(f"The device {self.address} cannot run ExecuTorch programs.")

    def close(self) -> None:
        """Release the connection and any temporary files."""

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
