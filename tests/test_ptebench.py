"""ptebench, the .pte runner, on this machine: real torch models exported to ExecuTorch with the
XNNPACK partitioner run through the host binary. The JSON contract, output equal to torch, thread
counts, the timing flags, per-operator profiles, every kind of bad program as an error line that
never stops the next line (corrupt programs that make ExecuTorch abort included), and
LocalDevice.run_programs.

Requires `make runner` beforehand (a missing binary fails, it is never built here)."""
from __future__ import annotations

import json
import random
import subprocess
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from jcw.android_harness import runner
from jcw.android_harness.device import DeviceError
from jcw.android_harness.local import LocalDevice

FAST = ["--warmup", "1", "--min-reps", "3", "--min-time-ms", "0"]
RESULT_KEYS = {"id", "runtime", "threads", "us_min", "us_median", "us_mean", "us_std", "reps", "timed_us",
               "line_us", "load_us", "input_shape", "output_shape"}
HEADER_KEYS = {"name", "version", "executorch", "default_threads", "cpu", "arch", "cores", "timing"}


class SmallCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        y = torch.relu(self.dw(y)) + y[:, :, ::2, ::2]
        return self.fc(y.mean((2, 3)))


class TwoInputs(nn.Module):
    def forward(self, a, b):
        return a * b + a


class IntInput(nn.Module):
    def forward(self, x):
        return x + 1


def export(model: nn.Module, example: tuple, path: Path) -> Path:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    exported = torch.export.export(model.eval(), example)
    path.write_bytes(to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
                     .to_executorch().buffer)
    return path


@pytest.fixture(scope="module")
def programs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("programs")
    torch.manual_seed(0)
    cnn = SmallCnn().eval()
    files = {"cnn": export(cnn, (torch.randn(1, 3, 16, 16),), root / "cnn.pte"),
             "two": export(TwoInputs(), (torch.randn(1, 4), torch.randn(1, 4)), root / "two.pte"),
             "int": export(IntInput(), (torch.arange(6).reshape(1, 6),), root / "int.pte")}
    data = files["cnn"].read_bytes()
    (root / "truncated.pte").write_bytes(data[: len(data) // 2])
    (root / "text.pte").write_text("this is not an ExecuTorch program, just text long enough " * 3)
    files.update(truncated=root / "truncated.pte", text=root / "text.pte", missing=root / "missing.pte")
    return {"model": cnn, "root": root, **{k: str(v) for k, v in files.items()}}


@pytest.fixture(scope="module")
def binary() -> Path:
    try:
        return runner.host_ptebench()
    except DeviceError as exc:
        pytest.fail(f"{exc} (tests never build it themselves)")


def run(binary: Path, lines: list, args: list[str] = FAST) -> tuple[dict, list[dict]]:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    done = subprocess.run([str(binary), *args], input=text.encode(), capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    out = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert runner.is_header(out[0]) and all(not runner.is_header(line) for line in out[1:])
    return out[0]["runner"], out[1:]


def test_header_names_the_runner_the_runtime_and_its_default_threads(binary):
    done = subprocess.run([str(binary), "--info"], capture_output=True, timeout=60)
    assert done.returncode == 0
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 1
    header = json.loads(lines[0])["runner"]
    assert HEADER_KEYS <= set(header)
    assert header["name"] == "ptebench" and header["executorch"] == version("executorch").split("+")[0]
    assert header["xnnpack_registered"] is True
    assert isinstance(header["default_threads"], int) and header["default_threads"] >= 1
    assert header["timing"]["min_reps"] == 5 and header["timing"]["max_time_ms"] == 5000


def test_result_lines_follow_the_contract_and_the_output_equals_torch(binary, programs, tmp_path):
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    x.numpy().astype("<f4").tofile(tmp_path / "x.f32")
    with torch.no_grad():
        want = programs["model"](x).numpy().ravel()
    header, results = run(binary, [{"id": "given", "pte": programs["cnn"], "threads": 1,
                                    "input_file": str(tmp_path / "x.f32")},
                                   {"id": "filled/by seed", "pte": programs["cnn"], "threads": 1}],
                          FAST + ["--dump", str(tmp_path)])
    for result in results:
        assert RESULT_KEYS <= set(result), result
        assert result["runtime"] == "executorch" and result["backends"] == ["XnnpackBackend"]
        assert 0 < result["us_min"] <= result["us_median"] <= result["timed_us"]
        assert result["reps"] >= 3 and result["load_us"] > 0 and result["line_us"] >= result["timed_us"]
        assert result["input_shape"] == [1, 3, 16, 16] and result["output_shape"] == [1, 5]
    got = np.fromfile(tmp_path / "given.output.f32", "<f4")
    assert np.abs(got - want).max() < 1e-4
    assert np.array_equal(np.fromfile(tmp_path / "given.input.f32", "<f4"), x.numpy().ravel())
    # Without input_file the input is uniform [-1, 1) from a fixed seed; the output still matches torch.
    filled = np.fromfile(tmp_path / "filled_by_seed.input.f32", "<f4")
    assert filled.size == 3 * 16 * 16 and -1 <= filled.min() and filled.max() < 1 and filled.std() > 0.4
    with torch.no_grad():
        want_filled = programs["model"](torch.from_numpy(filled.reshape(1, 3, 16, 16))).numpy().ravel()
    assert np.abs(np.fromfile(tmp_path / "filled_by_seed.output.f32", "<f4") - want_filled).max() < 1e-4
    _, again = run(binary, [{"id": "again", "pte": programs["cnn"]}], FAST + ["--dump", str(tmp_path)])
    assert np.array_equal(np.fromfile(tmp_path / "again.input.f32", "<f4"), filled)


def test_threads_are_applied_and_recorded(binary, programs):
    header, results = run(binary, [{"id": f"t{n}", "pte": programs["cnn"], "threads": n} for n in (1, 2, 0, 3)]
                          + [{"id": "absent", "pte": programs["cnn"]}])
    assert [r["threads"] for r in results] == [1, 2, header["default_threads"], 3, header["default_threads"]]


def test_timing_flags_bound_the_repetitions(binary, programs):
    _, results = run(binary, [{"id": "a", "pte": programs["cnn"], "threads": 1}],
                     ["--warmup", "0", "--min-reps", "7", "--max-reps", "7", "--min-time-ms", "0"])
    assert results[0]["reps"] == 7
    _, results = run(binary, [{"id": "b", "pte": programs["cnn"], "threads": 1}],
                     ["--min-reps", "50", "--max-reps", "4"])
    assert results[0]["reps"] == 4


def test_every_bad_line_is_one_error_sentence_and_the_next_line_runs(binary, programs, tmp_path):
    (tmp_path / "short.f32").write_bytes(b"\0" * 12)
    bad = {
        "text": {"pte": programs["text"]},
        "truncated": {"pte": programs["truncated"]},
        "missing": {"pte": programs["missing"]},
        "int": {"pte": programs["int"]},
        "two": {"pte": programs["two"]},
        "short_input": {"pte": programs["cnn"], "input_file": str(tmp_path / "short.f32")},
        "no_pte": {},
        "bad_threads": {"pte": programs["cnn"], "threads": -1},
    }
    lines: list = []
    for name, fields in bad.items():
        lines += [{"id": name, **fields}, {"id": f"after_{name}", "pte": programs["cnn"], "threads": 1}]
    lines += ["{not json", {"id": "last", "pte": programs["cnn"], "threads": 1}]
    _, results = run(binary, lines)
    assert len(results) == len(lines)
    errors = {r["id"]: r["error"] for r in results if "error" in r}
    assert set(errors) == set(bad) | {None}
    for result in results:
        if "error" not in result:
            assert result["id"].startswith("after_") or result["id"] == "last"
    for message in errors.values():
        assert message and "\n" not in message and len(message) < 400
    assert "not an ExecuTorch program" in errors["text"]
    assert "truncated or corrupt" in errors["truncated"] or "too short" in errors["truncated"]
    assert "No such file" in errors["missing"]
    assert "not float32" in errors["int"] and "Long" in errors["int"]
    assert "takes 2 inputs" in errors["two"]
    assert "input_file" in errors["short_input"]


def test_corrupt_programs_never_stop_the_runner(binary, programs, tmp_path):
    """Flipped bytes that pass ExecuTorch's verifier can make it abort (ET_CHECK) or crash: each line
    runs in its own child process, so such a line is an error result and the run goes on."""
    data = Path(programs["cnn"]).read_bytes()
    rng = random.Random(11)
    lines = []
    for i in range(150):
        corrupt = bytearray(data)
        for _ in range(rng.choice([1, 2, 4, 16])):
            corrupt[rng.randrange(8, len(data))] = rng.choice([0, 255, rng.randrange(256)])
        (tmp_path / f"c{i}.pte").write_bytes(bytes(corrupt))
        lines.append({"id": f"c{i}", "pte": str(tmp_path / f"c{i}.pte"), "threads": 1})
    lines.append({"id": "last", "pte": programs["cnn"], "threads": 1})
    _, results = run(binary, lines, ["--warmup", "0", "--min-reps", "1", "--max-reps", "1", "--timeout-s", "60"])
    assert [r["id"] for r in results] == [line["id"] for line in lines]
    assert "error" not in results[-1]
    assert sum("error" in r for r in results) > 50


def test_profile_ops_breaks_the_program_into_operators(binary, programs):
    _, results = run(binary, [{"id": "p", "pte": programs["cnn"], "threads": 1, "profile_ops": True},
                              {"id": "plain", "pte": programs["cnn"], "threads": 1}])
    ops = results[0]["ops"]
    names = [op["name"] for op in ops]
    assert names[0] == "Method::execute" and "DELEGATE_CALL" in names
    assert any(name.startswith("Convolution") for name in names)
    assert all(op["us"] >= 0 and op["calls"] > 0 for op in ops)
    assert "ops" not in results[1]


def test_flag_mistakes_exit_2_with_a_sentence(binary, tmp_path):
    for args in (["--min-reps", "0"], ["--bogus", "1"], ["--dump", str(tmp_path / "absent")], ["--warmup"]):
        done = subprocess.run([str(binary), *args], input=b"", capture_output=True, timeout=60)
        assert done.returncode == 2 and done.stderr.decode().startswith("ptebench: "), args


def test_local_device_runs_programs(programs, tmp_path):
    device = LocalDevice()
    info = device.program_runner_info()
    assert info["name"] == "ptebench" and info["default_threads"] >= 1
    results = list(device.run_programs([{"id": "a", "pte": Path(programs["cnn"]), "threads": 1},
                                        {"id": "b", "pte": programs["text"], "threads": 1},
                                        {"id": "c", "pte": programs["cnn"], "threads": 0}], FAST))
    assert [r["id"] for r in results] == ["a", "b", "c"]
    assert results[0]["threads"] == 1 and results[2]["threads"] == info["default_threads"]
    assert "error" in results[1] and device.last_program_header["name"] == "ptebench"
    pinned = LocalDevice(threads=2, affinity=[0])
    assert [r["threads"] for r in pinned.run_programs([{"id": "d", "pte": programs["cnn"]}], FAST)] == [2]
