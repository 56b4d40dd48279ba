"""ptebench in the Android arm64 bundle: present with its launcher and the executorch wheel's arm64
libraries, its library closure complete; under qemu-aarch64-static it runs a real .pte to the same
output as torch; and AdbDevice against the emulated phone pushes a program once by checksum, runs it
with ptebench.sh, maps errors back to host paths and resumes after a dropped link.

Requires `make runner-android` beforehand (a missing bundle fails, it is never built here)."""
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
from torch import nn

from jcw.android_harness import runner
from jcw.android_harness.adb_transport import Timeouts
from jcw.android_harness.connect import open_device
from jcw.android_harness.device import DeviceError

FAST = ["--warmup", "0", "--min-reps", "2", "--min-time-ms", "0"]
EM_AARCH64 = 183
ET_LIBS = {"libexecutorch.so", "libexecutorch_backend_xnnpack.so", "libexecutorch_threadpool.so",
           "libexecutorch_kernels_optimized.so"}


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def bundle() -> Path:
    try:
        path = runner.android_bundle_dir()
    except DeviceError as exc:
        pytest.fail(f"{exc} (tests never build the bundle themselves)")
    return path


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> dict:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    root = tmp_path_factory.mktemp("pte")
    torch.manual_seed(1)
    model = Tiny().eval()
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    lowered = to_edge_transform_and_lower(torch.export.export(model, (x,)), partitioner=[XnnpackPartitioner()])
    (root / "tiny.pte").write_bytes(lowered.to_executorch().buffer)
    x.numpy().astype("<f4").tofile(root / "x.f32")
    (root / "text.pte").write_text("not a program " * 10)
    with torch.no_grad():
        want = model(x).numpy().ravel()
    return {"pte": str(root / "tiny.pte"), "input": str(root / "x.f32"), "text": str(root / "text.pte"),
            "want": want, "root": root}


def test_bundle_holds_ptebench_its_launcher_and_a_closed_library_set(bundle):
    files = runner.bundle_manifest(bundle)["files"]
    assert {"ptebench", runner.PTEBENCH_LAUNCHER, "libstdc++.so.6", "libdl.so.2"} | ET_LIBS <= set(files)
    assert hashlib.sha256((bundle / "ptebench").read_bytes()).hexdigest() == files["ptebench"]
    assert os.access(bundle / "ptebench", os.X_OK) and os.access(bundle / runner.PTEBENCH_LAUNCHER, os.X_OK)
    assert subprocess.run(["sh", "-n", str(bundle / runner.PTEBENCH_LAUNCHER)]).returncode == 0
    for name in ["ptebench", *sorted(ET_LIBS)]:
        head = (bundle / name).read_bytes()[:20]
        assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == EM_AARCH64, name
        dynamic = subprocess.run(["readelf", "-d", str(bundle / name)], capture_output=True, text=True,
                                 check=True).stdout
        needed = [line.split("[", 1)[1].rstrip("]") for line in dynamic.splitlines() if "(NEEDED)" in line]
        assert needed and all((bundle / lib).is_file() for lib in needed), (name, needed)


@pytest.mark.slow
def test_ptebench_under_qemu_runs_a_program_to_torchs_output(bundle, program, tmp_path):
    if shutil.which(runner.QEMU_AARCH64) is None:
        pytest.fail("qemu-aarch64-static is missing; install qemu-user-static (make setup does).")
    env = {**os.environ, "CONVBENCH_EMULATOR": runner.QEMU_AARCH64}
    lines = [{"id": "tiny", "pte": program["pte"], "threads": 1, "input_file": program["input"]},
             {"id": "text", "pte": program["text"]},
             {"id": "tiny2", "pte": program["pte"], "threads": 2}]
    done = subprocess.run(["sh", str(bundle / runner.PTEBENCH_LAUNCHER), *FAST, "--dump", str(tmp_path)],
                          input="".join(json.dumps(line) + "\n" for line in lines).encode(), env=env,
                          cwd=tmp_path, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    out = [json.loads(line) for line in done.stdout.decode().splitlines()]
    header, results = out[0]["runner"], out[1:]
    assert header["name"] == "ptebench" and header["arch"] == "aarch64" and header["xnnpack_registered"]
    assert [r["id"] for r in results] == ["tiny", "text", "tiny2"]
    assert "not an ExecuTorch program" in results[1]["error"]
    for result in (results[0], results[2]):
        assert result["runtime"] == "executorch" and result["reps"] == 2 and result["output_shape"] == [1, 4]
    assert [results[0]["threads"], results[2]["threads"]] == [1, 2]
    got = np.fromfile(tmp_path / "tiny.output.f32", "<f4")
    assert np.abs(got - program["want"]).max() < 1e-4


# ---- AdbDevice against the emulated phone -------------------------------------------------------
@pytest.fixture
def phone(tmp_path, tmp_path_factory, monkeypatch):
    from jcw.android_harness.emulator import EmulatedPhone
    monkeypatch.setenv("ANDROID_USER_HOME", str(tmp_path_factory.getbasetemp() / "android-home"))
    with EmulatedPhone(sandbox=tmp_path / "phone", port=0) as emulated:
        yield emulated


def connect(phone):
    return open_device(f"tcp:{phone.host}:{phone.port}",
                       timeouts=Timeouts(connect_s=5, auth_s=2, command_s=60, push_s=60, idle_s=120))


@pytest.mark.device
@pytest.mark.slow
def test_adb_device_pushes_a_program_once_and_runs_it_with_ptebench(bundle, program, phone):
    sha = hashlib.sha256(Path(program["pte"]).read_bytes()).hexdigest()
    lines = [{"id": "a", "pte": program["pte"], "threads": 1, "input_file": program["input"]},
             {"id": "not-pte", "pte": program["text"], "threads": 1},
             {"id": "gone", "pte": str(program["root"] / "absent.pte"), "threads": 1},
             {"id": "b", "pte": Path(program["pte"]), "threads": 0}]
    with connect(phone) as device:
        info = device.program_runner_info()
        assert info["name"] == "ptebench" and info["arch"] == "aarch64"
        results = {r["id"]: r for r in device.run_programs(lines, FAST)}
        assert set(results) == {"a", "not-pte", "gone", "b"}
        assert results["a"]["threads"] == 1 and results["a"]["output_shape"] == [1, 4]
        assert results["b"]["threads"] == info["default_threads"]
        # Errors name the host's file, not its copy on the phone.
        assert program["text"] in results["not-pte"]["error"] and "programs/" not in results["not-pte"]["error"]
        assert "absent.pte" in results["gone"]["error"]
        stored = phone.data_dir / "jcw" / "programs" / f"{sha}.pte"
        assert stored.read_bytes() == Path(program["pte"]).read_bytes()
        assert f"{sha}.pte" in device.pushed_programs
    with connect(phone) as again:
        assert [r["id"] for r in again.run_programs(lines[:1], FAST)] == ["a"]
        assert again.pushed_programs == []            # already on the phone, same checksum
    stored.write_bytes(b"damaged")
    with connect(phone) as third:
        result = next(iter(third.run_programs(lines[:1], FAST)))
        assert "error" not in result and third.pushed_programs == [f"{sha}.pte"]


@pytest.mark.device
@pytest.mark.slow
def test_adb_device_resumes_programs_after_a_dropped_link(bundle, program, phone):
    lines = [{"id": f"p{i}", "pte": program["pte"], "threads": 1} for i in range(3)]
    with connect(phone) as device:
        device.program_runner_info()
        phone.faults.drop_at_line = 1
        ids = [r["id"] for r in device.run_programs(lines, FAST)]
        assert phone.faults.fired == ["drop_at_line=1"] and device.reconnects == 1
        assert sorted(ids) == ["p0", "p1", "p2"] and len(ids) == 3
