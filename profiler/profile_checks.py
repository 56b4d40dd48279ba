"""What a rerun of a profile must agree with before it measures anything: the device and the layer runner, the
.pte runner's ExecuTorch, and the program counts and sizes. Each refusal is one sentence naming the flag to
change; the weights mode is profiler.labels' to check.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jcw.android_harness.device import Device
from jcw.profiler import program_session
from jcw.profiler.profile_params import ProfileParamsError
from jcw.profiler.store import ProfileStore


def check_device(store: ProfileStore, device: Device) -> None:
    """Record the device and its layer runner; refuse another device, runner version or XNNPACK build."""
    stored = store.get_meta("device_address")
    if stored is not None and stored != device.address:
        raise ProfileParamsError(f"profile {store.directory} was measured on {stored}, not {device.address}; "
                                 f"choose another --out for this device")
    runner = device.runner_info()
    old = store.get_meta("runner")
    if old is not None:
        for key in ("version", "xnnpack"):
            if old.get(key) != runner.get(key):
                raise ProfileParamsError(
                    f"profile {store.directory} was measured with runner {key} {old.get(key)}, this runner is "
                    f"{runner.get(key)}; choose another --out")
    else:
        store.set_meta("runner", runner)
    if stored is None:
        store.set_meta("device_address", device.address)
        store.set_meta("device_facts", device.facts())


def check_programs(store: ProfileStore, header: dict[str, Any] | None, programs: int,
                   sizes: Sequence[int] | None, out_dir: Path, sparse: int = 0) -> list[int] | None:
    """Record the .pte runner's header and the program counts; refuse a rerun that would mix ExecuTorch
    versions, lower --programs or --sparse-programs or change --program-sizes. Returns the program input
    sizes in force."""
    if header is not None:
        old = store.get_meta("program_runner")
        if old is not None and old.get("executorch") != header.get("executorch"):
            raise ProfileParamsError(
                f"profile {out_dir} timed its programs with ExecuTorch {old.get('executorch')}, this runner has "
                f"{header.get('executorch')}; choose another --out")
        if old is None:
            store.set_meta("program_runner", header)
    if programs or sparse:
        old = store.get_meta("program_params") or {}
        for flag, asked, stored in (("--programs", programs, old.get("programs", 0)),
                                    ("--sparse-programs", sparse, old.get("sparse", 0))):
            if asked and asked < stored:
                raise ProfileParamsError(
                    f"profile {out_dir} was planned with {flag} {stored} and a rerun may raise it but not lower it "
                    f"(you asked for {asked}; {flag} 0 skips them); rerun with the same value to resume or "
                    f"extend it, or choose another --out")
        stored_sizes = old.get("sizes")
        sizes = sorted(int(v) for v in sizes) if sizes else None
        if (old.get("programs") or old.get("sparse")) and sizes != stored_sizes:
            raise ProfileParamsError(
                f"profile {out_dir} was planned with --program-sizes {_sizes_text(stored_sizes)}, not "
                f"{_sizes_text(sizes)}; rerun with the same sizes or choose another --out")
        train, held, unseen = program_session.program_counts(programs or old.get("programs", 0))
        params = {"programs": train, "holdout": held, "unseen": unseen,
                  "operator": program_session.operator_count(train), "sizes": sizes}
        if sparse or old.get("sparse"):  # a profile without sparse programs keeps the params it always had
            params["sparse"] = sparse or old["sparse"]
        store.set_meta("program_params", params)
        return sizes
    return (store.get_meta("program_params") or {}).get("sizes")


def _sizes_text(sizes: Sequence[int] | None) -> str:
    return "(default)" if not sizes else ",".join(map(str, sizes))
