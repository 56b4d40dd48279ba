"""The Android arm64 runner bundle: complete, checksummed, and under qemu-aarch64-static it runs
the same plans as the host runner with the same operands and the same correctness checks, dense
and sparse lines alike on the XNNPACK inside the executorch wheel (its arm64 build has the SpMM
kernel the x86 one lacks, so Debian's XNNPACK is not in the bundle).

Requires `make runner-android` beforehand; a missing bundle fails (it is never built here)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jcw.android_harness import runner

pytestmark = pytest.mark.slow

FAST = ["--warmup", "0", "--min-reps", "2", "--min-time-ms", "0"]
EM_AARCH64 = 183
WHEEL_LIBS = {"libexecutorch.so", "libexecutorch_backend_xnnpack.so", "libexecutorch_threadpool.so"}

CASES = [
    {"id": "dense_k3", "op": "conv", "cin": 4, "cout": 5, "k": 3, "h": 7, "w": 6, "density": 0.7},
    {"id": "dw_k3_s2", "op": "dwconv", "cin": 4, "cout": 4, "k": 3, "stride": 2, "h": 7, "w": 7},
    {"id": "sparse_k1", "op": "conv", "cin": 8, "cout": 6, "k": 1, "h": 5, "w": 5, "density": 0.3, "impl": "sparse"},
    {"id": "sparse_k3_s2", "op": "conv", "cin": 3, "cout": 5, "k": 3, "stride": 2, "pad": 1, "h": 9, "w": 8,
     "density": 0.4, "impl": "sparse", "threads": 2},
]
for case in CASES:
    case.setdefault("impl", "dense")
    case.setdefault("stride", 1)
    case.setdefault("density", 1.0)


@pytest.fixture(scope="module")
def bundle() -> Path:
    try:
        return runner.android_bundle_dir()
    except runner.DeviceError as exc:
        pytest.fail(f"{exc} (tests never build the bundle themselves)")


@pytest.fixture(scope="module")
def qemu_command(bundle: Path) -> list[str]:
    if shutil.which(runner.QEMU_AARCH64) is None:
        pytest.fail("qemu-aarch64-static is missing; install qemu-user-static (make setup does).")
    return runner.emulated_bundle_command(bundle)


def run(command: list[str], lines: list, args: list[str]) -> tuple[dict, list[dict]]:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    done = subprocess.run(command + args, input=text.encode(), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    out = [json.loads(line) for line in done.stdout.decode().splitlines()]
    return out[0]["runner"], out[1:]


def test_manifest_checksums_cover_every_file(bundle: Path) -> None:
    manifest = runner.bundle_manifest(bundle)
    on_disk = sorted(p.name for p in bundle.iterdir() if p.name != runner.MANIFEST_NAME)
    assert sorted(manifest["files"]) == on_disk
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == digest, name
    assert {"convbench", "convbench.sh", runner.ANDROID_LOADER, "libstdc++.so.6"} | WHEEL_LIBS <= set(on_disk)
    assert "libXNNPACK.so.0" not in on_disk  # convbench's XNNPACK is the wheel's


def test_binaries_are_arm64_and_the_library_closure_is_complete(bundle: Path) -> None:
    for path in bundle.iterdir():
        head = path.read_bytes()[:20]
        if head[:4] != b"\x7fELF":
            continue
        assert int.from_bytes(head[18:20], "little") == EM_AARCH64, path.name
        dynamic = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
        for line in dynamic.splitlines():
            if "(NEEDED)" in line:
                needed = line.split("[", 1)[1].rstrip("]")
                assert (bundle / needed).is_file(), f"{path.name} needs {needed}, which the bundle lacks"


def test_launcher_is_posix_sh_and_runs_from_any_directory(bundle: Path, qemu_command: list[str],
                                                          tmp_path: Path) -> None:
    launcher = bundle / "convbench.sh"
    assert os.access(launcher, os.X_OK)
    assert subprocess.run(["sh", "-n", str(launcher)]).returncode == 0
    env = {**os.environ, "CONVBENCH_EMULATOR": runner.QEMU_AARCH64}
    done = subprocess.run(["sh", str(launcher), "--info"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)["runner"]
    assert info["arch"] == "aarch64" and info["xnnpack_initialized"] is True
    assert info["xnnpack"].startswith("executorch-") and info["xnnpack_sparse"] == info["xnnpack"]
    assert info["version"].startswith("0.2.") and info["default_threads"] >= 1


@pytest.mark.parametrize("cpu, has_sme", [(runner.EMULATED_CPU, False), ("max", True)])
def test_bundle_under_qemu_matches_host_runner_and_torch(bundle: Path, qemu_command: list[str], tmp_path: Path,
                                                         cpu: str, has_sme: bool) -> None:
    host_dump, arm_dump = tmp_path / "host", tmp_path / "arm64"
    host_dump.mkdir(), arm_dump.mkdir()
    plan = CASES + ['{"id": "broken"', {**CASES[0], "id": "after_broken"}]
    host_info, host_results = run([str(runner.host_binary())], plan, FAST + ["--dump", str(host_dump)])
    arm_info, arm_results = run(runner.emulated_bundle_command(bundle, cpu=cpu), plan, FAST + ["--dump", str(arm_dump)])
    # Dense on the same wheel's XNNPACK on both; sparse on the wheel's too on arm64.
    assert arm_info["arch"] == "aarch64" and arm_info["xnnpack"] == host_info["xnnpack"]
    assert arm_info["xnnpack_sparse"] == arm_info["xnnpack"]
    # Where the CPU has SME (qemu's "max"), dense conv lines run the pf32 operator ExecuTorch picks there, and the
    # torch comparison below checks that path; the emulated phone's own CPU model has none, as a Pixel 6.
    assert arm_info["xnnpack_pf32"] is has_sme
    assert [r["id"] for r in arm_results] == [r["id"] for r in host_results]
    assert "error" in arm_results[-2] and "error" not in arm_results[-1]
    for case, result in zip(CASES, arm_results):
        assert "error" not in result, result
        assert result["xnnpack"] == arm_info["xnnpack"], result
        cid = case["id"]
        # Same seeded operands on both architectures: the same operator is measured.
        for part in ("input", "weights"):
            assert (arm_dump / f"{cid}.{part}.f32").read_bytes() == (host_dump / f"{cid}.{part}.f32").read_bytes()
        groups = case["cin"] if case["op"] == "dwconv" else 1
        k = case["k"]
        x = torch.from_numpy(np.fromfile(arm_dump / f"{cid}.input.f32", "<f4").astype(np.float64))
        w = torch.from_numpy(np.fromfile(arm_dump / f"{cid}.weights.f32", "<f4").astype(np.float64))
        x = x.reshape(1, case["cin"], case["h"], case["w"])
        w = w.reshape(case["cout"], case["cin"] // groups, k, k)
        pad = case.get("pad", k // 2)
        expected = F.conv2d(x, w, stride=case["stride"], padding=pad, groups=groups)
        got = torch.from_numpy(np.fromfile(arm_dump / f"{cid}.output.f32", "<f4").astype(np.float64))
        scale = F.conv2d(x.abs(), w.abs(), stride=case["stride"], padding=pad, groups=groups)
        assert torch.all((got.reshape(expected.shape) - expected).abs() <= 1e-5 * scale + 1e-7), cid


def test_wheel_spmm_under_qemu_scales_with_density(qemu_command: list[str]) -> None:
    spec = {"op": "conv", "cin": 128, "cout": 128, "k": 1, "h": 28, "w": 28, "impl": "sparse", "threads": 1}
    info, (sparse, full) = run(qemu_command, [{"id": "d005", "density": 0.05, **spec},
                                              {"id": "d100", "density": 1.0, **spec}],
                               ["--warmup", "1", "--min-reps", "3", "--min-time-ms", "0"])
    assert "error" not in sparse and "error" not in full
    assert sparse["xnnpack"] == full["xnnpack"] == info["xnnpack"]
    # 20x fewer multiply-adds: even emulated, the SpMM kernel must show it.
    assert sparse["us_min"] < 0.5 * full["us_min"], (sparse, full)
