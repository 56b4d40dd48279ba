"""`jcw measure --net` and `jcw export` of a sparse run on the local device with the real sparse network
engine (ptebench "net" lines): the JSON contract of --pte plus the engine's fields, and the .jcwnet an
export writes beside the .pte measured like it."""
import json
import subprocess

import numpy as np
import pytest
import torch

from jcw.__main__ import main
from jcw.android_harness.runner import PTEBENCH_HOST_BINARY as PTEBENCH
from jcw.profiler import session
from jcw.profiler.netfile import read_net
from jcw.search import zoo
from jcw.search.export import write_network_file
from jcw.search.genome import SearchSpace
from jcw.search.graph import read_model
from jcw.search.netexport import pruned_conv_layers
from jcw.search.prune import apply_genome, make_permanent
from jcw.search.run import SearchSettings, settings_to_json

FAST = ["--runner-arg=--warmup=0", "--runner-arg=--min-reps=3", "--runner-arg=--min-time-ms=0"]


@pytest.fixture(scope="module", autouse=True)
def engine_built():
    try:
        usage = subprocess.run([str(PTEBENCH), "--help"], capture_output=True, text=True, timeout=30)
    except OSError:
        pytest.fail(f"the .pte runner {PTEBENCH} is not built; run `make -C android_harness/native host`")
    if '"net"' not in usage.stdout + usage.stderr:
        pytest.fail(f"{PTEBENCH} has no sparse network engine (its --help never mentions \"net\" lines)")


@pytest.fixture(scope="module")
def digits_net(tmp_path_factory):
    """Digits at width 0.5 and density 0.3 on its non-stem convolutions, as `jcw export --uniform` writes it."""
    from jcw.search.uniform import uniform_candidate
    model, shape = zoo.build("digits")
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    space, x = uniform_candidate(model, example, 0.5, 0.3, "digits")
    pruned = make_permanent(apply_genome(model, space, x)).eval()
    path = tmp_path_factory.mktemp("nets") / "digits.jcwnet"
    write_network_file(pruned, example, path, "digits", pruned_conv_layers(space, x))
    return path


def _cli(capsys, *argv):
    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def test_measure_net_json_contract(digits_net, capsys):
    status, out, err = _cli(capsys, "measure", "--device", "local", "--net", str(digits_net), "--threads", "1",
                            "--rounds", "2", "--json", *FAST)
    assert status == 0, err
    (r,) = [json.loads(line) for line in out.splitlines()]
    net = read_net(digits_net)
    assert r["net"] == str(digits_net) and r["device"] == "local" and r["runtime"] == "sparse"
    assert r["latency_ms"] == pytest.approx(min(r["round_us_min"]) / 1000.0) and 0 < r["us_min"] <= r["us_median"]
    assert r["threads"] == 1 and r["rounds"] == 2 and r["reps"] >= 6
    assert r["sparse_layers"] == net.sparse_layers == ["conv2", "conv3", "conv4"] and r["layers"] == len(net.nodes)
    assert isinstance(r["conversions"], int) and r["conversions"] >= 0
    assert 0 <= r["max_abs_error"] <= net.tolerance * max(1.0, float(np.abs(net.check_output).max()))
    status, out, err = _cli(capsys, "measure", "--device", "local", "--net", str(digits_net), *FAST)
    assert status == 0 and "sparse layers" in out and "3/6" in out and "digits.jcwnet" in out, err


def test_measure_programs_runs_network_files_from_python(digits_net):
    (result,) = session.measure_programs("local", [digits_net], threads=1, key="net",
                                         runner_args=["--warmup", "0", "--min-reps", "2", "--min-time-ms", "0"])
    assert result["runtime"] == "sparse" and result["latency_ms"] > 0 and result["sparse_layers"]


def _sparse_run(run_dir):
    """A sparse-runtime run directory of digits with one candidate (what `jcw search --runtime sparse` writes)."""
    settings = SearchSettings(runtime="sparse")
    model, shape = zoo.build("digits")
    space = SearchSpace(read_model(model, torch.randn(*shape)), settings.width_choices, settings.density_choices,
                        settings.bounds, name="digits")
    x = space.uniform(0.6, 0.3)
    impl = dict.fromkeys(pruned_conv_layers(space, x), "sparse")
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps(
        {"model": "digits", "input_shape": list(shape), "model_seed": 0, "settings": settings_to_json(settings),
         "runtime": "sparse", "threads": 1, "device_address": "local"}))
    (run_dir / "front.json").write_text(json.dumps([
        {"genome": x.tolist(), "latency_ms": 1.0, "accuracy": 0.9, "runtime": "sparse",
         "latency_ms_by_runtime": {"sparse": 1.0, "executorch": 1.5},
         "layers": [{"name": layer.name, "impl": impl.get(layer.name, "dense")} for layer in space.graph.layers]}]))
    return sorted(impl)


@pytest.mark.slow
def test_export_of_a_sparse_run_writes_and_measures_both_files(tmp_path, capsys):
    sparse = _sparse_run(tmp_path / "run")
    status, out, err = _cli(capsys, "export", "--run", str(tmp_path / "run"), "--pick", "2", "--json",
                            "--out", str(tmp_path / "m.pte"))
    assert status == 0, err
    report = json.loads(out)
    assert report["export_runtime"] == "sparse" and report["pte"] == str(tmp_path / "m.pte")
    assert report["net"] == report["files"]["net"] == str(tmp_path / "m.jcwnet")
    assert sorted(report["net_sparse_layers"]) == sparse == sorted(read_net(tmp_path / "m.jcwnet").sparse_layers)
    assert report["measured_ms"] > 0 and report["net_measured_ms"] > 0 and report["net_measure_error"] is None
    assert report["net_max_abs_error"] < 1e-3
    # --runtime executorch on the same run writes the dense deployment only
    status, out, err = _cli(capsys, "export", "--run", str(tmp_path / "run"), "--pick", "2", "--json",
                            "--runtime", "executorch", "--out", str(tmp_path / "e.pte"))
    assert status == 0 and json.loads(out)["net"] is None and not (tmp_path / "e.jcwnet").exists()


@pytest.mark.device
@pytest.mark.slow
def test_measure_net_on_the_emulated_phone_pushes_the_file_once(digits_net, tmp_path, tmp_path_factory, capsys,
                                                                monkeypatch):
    """The ADB path: the .jcwnet goes to the phone by its sha256, like a .pte, and runs in the arm64 engine."""
    import hashlib

    from jcw.android_harness import runner
    from jcw.android_harness.device import DeviceError
    from jcw.android_harness.emulator import EmulatedPhone
    try:
        runner.android_bundle_dir()
    except DeviceError as exc:
        pytest.fail(f"{exc} (tests never build the bundle themselves)")
    monkeypatch.setenv("ANDROID_USER_HOME", str(tmp_path_factory.getbasetemp() / "android-home"))
    with EmulatedPhone(sandbox=tmp_path / "phone", port=0) as phone:
        status, out, err = _cli(capsys, "measure", "--device", f"tcp:{phone.host}:{phone.port}", "--net",
                                str(digits_net), "--threads", "1", "--json", *FAST)
        assert status == 0, err
        (r,) = [json.loads(line) for line in out.splitlines()]
        assert r["runtime"] == "sparse" and r["sparse_layers"] == ["conv2", "conv3", "conv4"] and r["us_min"] > 0
        assert r["max_abs_error"] <= 1e-3
        sha = hashlib.sha256(digits_net.read_bytes()).hexdigest()
        assert (phone.data_dir / "jcw" / "programs" / f"{sha}.jcwnet").read_bytes() == digits_net.read_bytes()
