"""`jcw measure --pte` and session.measure_programs on the local device with real ExecuTorch programs:
the JSON contract, the statistic, thread defaults, and every bad input as one sentence."""
import json
import os

import pytest

from jcw.__main__ import main
from jcw.android_harness.local import LocalDevice
from jcw.android_harness.runner import HOST_BINARY
from jcw.profiler import program_session, session

PTEBENCH = HOST_BINARY.parent / "ptebench"
FAST = ["--runner-arg=--warmup=0", "--runner-arg=--min-reps=3", "--runner-arg=--min-time-ms=0"]


@pytest.fixture(scope="module", autouse=True)
def runner_built():
    if not os.access(PTEBENCH, os.X_OK):
        pytest.fail(f"the .pte runner {PTEBENCH} is not built; run `make -C android_harness/native host`")


def _export(module, example_inputs, path):
    """As search/export.py does it: torch.export -> XNNPACK-lowered edge program -> .pte bytes."""
    import torch

    from jcw.profiler.program_build import quiet_executorch
    with quiet_executorch():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
        exported = torch.export.export(module.eval(), example_inputs)
        program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(program.buffer)
    return path


@pytest.fixture(scope="module")
def ptes(tmp_path_factory):
    import torch

    class TwoInputs(torch.nn.Module):
        def forward(self, a, b):
            return a + b

    class IntInput(torch.nn.Module):
        def forward(self, x):
            return x * 2

    folder = tmp_path_factory.mktemp("ptes")
    torch.manual_seed(0)
    good = _export(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()),
                   (torch.randn(1, 3, 16, 16),), folder / "tiny.pte")
    data = good.read_bytes()
    (folder / "truncated.pte").write_bytes(data[:len(data) // 2])
    (folder / "notes.pte").write_text("these are my notes, not a program\n")
    return {"good": good, "truncated": folder / "truncated.pte", "text": folder / "notes.pte",
            "two": _export(TwoInputs(), (torch.ones(1, 4), torch.ones(1, 4)), folder / "two.pte"),
            "int": _export(IntInput(), (torch.ones(1, 4, dtype=torch.int64),), folder / "int.pte"),
            "dir": folder}


def run_cli(capsys, *argv):
    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_sentence(status, err, *words):
    assert status == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("usage:")
             and not line.startswith(" ") and " configs " not in line]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]


def test_executorch_files_carry_the_et12_identifier(ptes):
    assert ptes["good"].read_bytes()[4:8] == program_session.PTE_MAGIC == b"ET12"
    assert program_session.check_pte(ptes["good"]) == ptes["good"]


def test_measure_pte_json_contract(ptes, capsys):
    default = LocalDevice().program_runner_info()["default_threads"]
    status, out, err = run_cli(capsys, "measure", "--device", "local", "--pte", str(ptes["good"]), "--json", *FAST)
    assert status == 0, err
    results = [json.loads(line) for line in out.splitlines()]
    assert len(results) == 1
    r = results[0]
    assert {"latency_ms", "us_min", "us_median", "reps", "threads", "runtime", "device", "pte"} <= set(r)
    assert r["latency_ms"] == pytest.approx(r["us_min"] / 1000.0) and 0 < r["us_min"] <= r["us_median"]
    assert r["runtime"] == "executorch" and r["device"] == "local" and r["pte"] == str(ptes["good"])
    assert r["threads"] == default and r["reps"] >= 3 and r["rounds"] == 1
    assert r["input_shape"] == [1, 3, 16, 16] and r["output_shape"] == [1, 8, 16, 16]


def test_measure_pte_threads_rounds_and_several_files(ptes, capsys):
    status, out, err = run_cli(capsys, "measure", "--device", "local", "--pte", str(ptes["good"]), "--pte",
                               str(ptes["good"]), "--threads", "1", "--rounds", "2", "--json", *FAST)
    assert status == 0, err
    results = [json.loads(line) for line in out.splitlines()]
    assert len(results) == 2 and all(r["threads"] == 1 and r["rounds"] == 2 for r in results)
    for r in results:  # the fastest repetition of the fastest round
        assert len(r["round_us_min"]) == 2 and r["latency_ms"] == pytest.approx(min(r["round_us_min"]) / 1000.0)
    status, out, err = run_cli(capsys, "measure", "--device", "local", "--pte", str(ptes["good"]), *FAST)
    assert status == 0, err
    assert "latency ms" in out and "tiny.pte" in out and "fastest repetition" in out


def test_measure_programs_python_api(ptes):
    results = session.measure_programs("local", [ptes["good"]], threads=1,
                                       runner_args=["--warmup", "0", "--min-reps", "2", "--min-time-ms", "0"])
    assert len(results) == 1 and results[0]["threads"] == 1 and results[0]["latency_ms"] > 0
    with LocalDevice() as device:
        again = session.measure_programs(device, [str(ptes["good"])], rounds=2,
                                         runner_args=["--warmup", "0", "--min-reps", "2", "--min-time-ms", "0"])
    assert again[0]["rounds"] == 2 and again[0]["threads"] == device.program_runner_info()["default_threads"]
    with pytest.raises(session.PteError, match="takes 2 inputs"):
        session.measure_programs(LocalDevice(), [ptes["good"], ptes["two"]])
    with pytest.raises(ValueError, match="rounds must be"):
        session.measure_programs(LocalDevice(), [ptes["good"]], rounds=0)


@pytest.mark.parametrize("case, words", [
    ("missing", ["nothing.pte does not exist"]),
    ("text", ["notes.pte is not an ExecuTorch program (.pte)", "ET12"]),
    ("truncated", ["truncated.pte is truncated"]),
    ("dir", ["is a directory, not an ExecuTorch program"]),
    ("int", ["int.pte:", "input is Long, not float32"]),
    ("two", ["two.pte:", "takes 2 inputs"]),
])
def test_measure_pte_bad_input_is_one_sentence(ptes, capsys, case, words):
    path = ptes["dir"] / "nothing.pte" if case == "missing" else ptes[case]
    status, out, err = run_cli(capsys, "measure", "--device", "local", "--pte", str(path), "--json", *FAST)
    assert_one_sentence(status, err, "jcw measure:", *words)
    assert out == ""


def test_measure_needs_layers_or_pte_not_both(ptes, capsys, tmp_path):
    status, _, err = run_cli(capsys, "measure", "--device", "local")
    assert status == 2 and "one of the arguments --layers --pte --net is required" in err and "Traceback" not in err
    layers = tmp_path / "l.jsonl"
    layers.write_text('{"op": "conv", "cin": 4, "cout": 4, "k": 1, "h": 4, "w": 4}\n')
    status, _, err = run_cli(capsys, "measure", "--device", "local", "--layers", str(layers), "--pte",
                             str(ptes["good"]))
    assert status == 2 and "not allowed with argument" in err
    status, out, _ = run_cli(capsys, "measure", "--help")
    assert status == 0 and "us_min / 1000" in " ".join(out.split())
