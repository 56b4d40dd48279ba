"""convbench, the native runner: agreement with torch, the sparse speed-up, robustness to bad
lines, determinism, the header and which XNNPACK build timed each line (runner contract in
ARCHITECTURE.md: dense on the executorch wheel's XNNPACK; sparse on the wheel's where its SpMM runs,
on x86 on Debian's 2022 build loaded in its own linker namespace)."""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jcw.android_harness import runner

FAST = ["--warmup", "1", "--min-reps", "2", "--min-time-ms", "1"]
#: The build dense lines must report: the XNNPACK inside the executorch wheel the kit pins.
WHEEL_BUILD = "executorch-" + importlib.metadata.version("executorch").split("+")[0]
#: The wheel's x86 XNNPACK has no SpMM kernel (its NCHW convolution says unsupported hardware).
SPARSE_ON_DEBIAN = platform.machine() in ("x86_64", "AMD64", "i686")


@pytest.fixture(scope="module")
def binary() -> Path:
    try:
        return runner.host_binary()
    except runner.DeviceError as exc:  # a missing build must fail loudly, not skip
        pytest.fail(str(exc))


def run(binary: Path, lines: list, args: list[str] = FAST, check: bool = True) -> tuple[dict, list[dict]]:
    """Runs a plan (dicts are JSON-encoded, strings sent verbatim); returns header and results."""
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    done = subprocess.run([str(binary), *args], input=text.encode(), capture_output=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr.decode()
    out = [json.loads(line) for line in done.stdout.decode().splitlines()]
    return out[0], out[1:]


def layer(id: str, **spec) -> dict:
    base = {"id": id, "op": "conv", "stride": 1, "density": 1.0, "impl": "dense", "threads": 1}
    return {**base, **spec}


TORCH_CASES = [
    layer("dense_k3", cin=5, cout=7, k=3, h=9, w=11),
    layer("dense_k5_s2_p0", cin=4, cout=6, k=5, stride=2, pad=0, h=13, w=12),
    layer("dense_k1", cin=9, cout=5, k=1, h=6, w=7, density=0.4),
    layer("dense_fc_one_nonzero", cin=10, cout=3, k=1, h=1, w=1, density=0.01),
    layer("dense_k3_p2", cin=3, cout=4, k=3, pad=2, h=7, w=5),
    layer("dense_k3_threads2", cin=8, cout=16, k=3, stride=2, h=15, w=15, threads=2),
    layer("dense_k1_wide", cin=48, cout=40, k=1, h=14, w=14, density=0.5),
    layer("dense_k3_s2_wide", cin=32, cout=24, k=3, stride=2, h=17, w=16),
    layer("dense_k7_s2_stem", cin=3, cout=16, k=7, stride=2, h=23, w=21),
    layer("dw_k3_s2", op="dwconv", cin=6, cout=6, k=3, stride=2, h=10, w=9),
    layer("dw_k5_p2", op="dwconv", cin=5, cout=5, k=5, h=8, w=8, density=0.5),
    layer("dw_k3_wide", op="dwconv", cin=40, cout=40, k=3, h=14, w=13),
    layer("dw_k5_s2_threads2", op="dwconv", cin=24, cout=24, k=5, stride=2, h=15, w=15, threads=2),
    layer("sparse_k1", cin=16, cout=12, k=1, h=7, w=9, density=0.3, impl="sparse"),
    layer("sparse_k1_p1", cin=6, cout=5, k=1, pad=1, h=4, w=5, density=0.5, impl="sparse"),
    layer("sparse_k1_s2", cin=10, cout=8, k=1, stride=2, h=9, w=8, density=0.5, impl="sparse"),
    layer("sparse_k3_s2", cin=6, cout=9, k=3, stride=2, h=11, w=10, density=0.4, impl="sparse"),
    layer("sparse_k3_p0", cin=5, cout=7, k=3, pad=0, h=8, w=9, density=0.6, impl="sparse"),
    layer("sparse_k5_s3", cin=3, cout=4, k=5, stride=3, pad=2, h=14, w=13, density=0.5, impl="sparse"),
    layer("sparse_k3_threads2", cin=8, cout=16, k=3, stride=1, h=12, w=12, density=0.2, impl="sparse", threads=2),
    layer("sparse_k1_wide", cin=64, cout=48, k=1, h=14, w=14, density=0.1, impl="sparse"),
    layer("sparse_k1_dense_weights", cin=40, cout=36, k=1, h=9, w=10, density=1.0, impl="sparse"),
    layer("sparse_k3_wide_threads2", cin=24, cout=32, k=3, h=13, w=12, density=0.25, impl="sparse", threads=2),
    # Stride 1 with padding (k-1)/2: the gather copies whole shifted planes (runner 0.2.4); these windows miss the
    # plane by columns (w below the shift), by rows (h below it) or both.
    layer("sparse_k5_same_narrow", cin=3, cout=4, k=5, h=6, w=2, density=0.5, impl="sparse"),
    layer("sparse_k7_same_short", cin=2, cout=3, k=7, h=2, w=9, density=0.6, impl="sparse", threads=2),
    layer("sparse_k3_same_1px", cin=4, cout=5, k=3, h=1, w=1, density=0.7, impl="sparse"),
]


def read_f32(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    data = np.fromfile(path, dtype="<f4")
    assert data.size == int(np.prod(shape)), f"{path.name}: {data.size} values, expected shape {shape}"
    return torch.from_numpy(data.reshape(shape).astype(np.float64))


def test_results_agree_with_torch_conv2d(binary: Path, tmp_path: Path) -> None:
    header, results = run(binary, TORCH_CASES, FAST + ["--dump", str(tmp_path)])
    info = header["runner"]
    assert [r["id"] for r in results] == [c["id"] for c in TORCH_CASES]
    for case, result in zip(TORCH_CASES, results):
        assert "error" not in result, result
        # Each line names the build that timed it: the header's dense or sparse build.
        assert result["xnnpack"] == info["xnnpack" if case["impl"] == "dense" else "xnnpack_sparse"], result
        cin, cout, k, h, w = (case[key] for key in ("cin", "cout", "k", "h", "w"))
        groups = cin if case["op"] == "dwconv" else 1
        pad = case.get("pad", k // 2)
        x = read_f32(tmp_path / f"{case['id']}.input.f32", (1, cin, h, w))
        weights = read_f32(tmp_path / f"{case['id']}.weights.f32", (cout, cin // groups, k, k))
        expected = F.conv2d(x, weights, stride=case["stride"], padding=pad, groups=groups)
        got = read_f32(tmp_path / f"{case['id']}.output.f32", tuple(expected.shape))
        scale = F.conv2d(x.abs(), weights.abs(), stride=case["stride"], padding=pad, groups=groups)
        assert torch.all((got - expected).abs() <= 1e-5 * scale + 1e-7), case["id"]
        # Exactly LayerSpec.nnz non-zeros: round(density * count), at least one.
        assert int((weights != 0).sum()) == max(1, round(case["density"] * weights.numel())), case["id"]
        assert result["max_abs_err"] <= float((got - expected).abs().max()) + 1e-6


def test_dense_runs_on_the_wheel_and_sparse_on_a_build_with_spmm(binary: Path) -> None:
    header, results = run(binary, [layer("dense", cin=8, cout=8, k=3, h=9, w=9),
                                   layer("dw", op="dwconv", cin=8, cout=8, k=3, h=9, w=9),
                                   layer("sparse", cin=8, cout=8, k=1, h=9, w=9, density=0.3, impl="sparse")])
    info = header["runner"]
    assert info["xnnpack"] == WHEEL_BUILD
    assert [r["xnnpack"] for r in results[:2]] == [WHEEL_BUILD, WHEEL_BUILD]
    if SPARSE_ON_DEBIAN:
        assert info["xnnpack_sparse"].startswith("debian-"), info
    else:
        assert info["xnnpack_sparse"] == WHEEL_BUILD, info
    assert results[2]["xnnpack"] == info["xnnpack_sparse"]


def test_sparse_spmm_is_much_faster_at_low_density(binary: Path) -> None:
    spec = dict(cin=256, cout=256, k=1, h=28, w=28, impl="sparse")
    _, results = run(binary, [layer("d005", density=0.05, **spec), layer("d100", density=1.0, **spec)],
                     ["--min-time-ms", "20"])
    sparse, dense = results
    assert "error" not in sparse and "error" not in dense
    assert sparse["xnnpack"] == dense["xnnpack"]
    assert sparse["us_median"] < 0.5 * dense["us_median"], (sparse, dense)


def test_sparse_lines_say_why_when_no_build_runs_spmm(binary: Path, tmp_path: Path) -> None:
    """Where the wheel has no SpMM, an unloadable Debian library leaves sparse lines an error naming why."""
    (tmp_path / "libXNNPACK.so.0").write_bytes(b"not a library")
    env = {**os.environ, "LD_LIBRARY_PATH": str(tmp_path)}
    text = "".join(json.dumps(line) + "\n" for line in [
        layer("s", cin=8, cout=8, k=1, h=5, w=5, density=0.5, impl="sparse"), layer("d", cin=8, cout=8, k=1, h=5, w=5)])
    done = subprocess.run([str(binary), *FAST], input=text, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    header, sparse, dense = (json.loads(line) for line in done.stdout.splitlines())
    assert "error" not in dense and dense["xnnpack"] == WHEEL_BUILD
    if not SPARSE_ON_DEBIAN:  # the wheel's own SpMM runs: Debian's library is never looked at
        assert header["runner"]["xnnpack_sparse"] == WHEEL_BUILD and "error" not in sparse
        return
    assert header["runner"]["xnnpack_sparse"] is None
    assert "unsupported hardware" in sparse["error"] and "libXNNPACK.so.0" in sparse["error"], sparse
    assert sparse["error"] == header["runner"]["xnnpack_sparse_error"]


def test_debian_build_on_request_times_dense_lines_too(binary: Path) -> None:
    line = layer("dense", cin=8, cout=8, k=3, h=9, w=9)
    bad = subprocess.run([str(binary), "--xnnpack", "2019"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--xnnpack" in bad.stderr
    if not SPARSE_ON_DEBIAN:
        return
    header, (result,) = run(binary, [line], FAST + ["--xnnpack", "debian"])
    assert header["runner"]["xnnpack"].startswith("debian-") and "error" not in result
    assert result["xnnpack"] == header["runner"]["xnnpack"]


def test_bad_lines_give_error_results_and_later_lines_still_run(binary: Path) -> None:
    good = layer("good", cin=4, cout=4, k=3, h=6, w=6)
    lines = [
        {**good, "id": "first"},
        '{"id": "broken", "op": "conv",',
        {k: v for k, v in good.items() if k != "cin"} | {"id": "no_cin"},
        {**good, "id": "str_cin", "cin": "4"},
        {**good, "id": "frac_k", "k": 2.5},
        {**good, "id": "bad_op", "op": "deconv"},
        {**good, "id": "zero_density", "density": 0},
        {**good, "id": "big_density", "density": 1.5},
        "[1, 2, 3]",
        "{}",
        "",
        '{"id": "long", "pad": "' + "x" * 70000 + '"}',
        {k: v for k, v in good.items() if k != "id"},
        {**good, "id": "extra_fields", "meta": {"source": ["resnet18", {"layer": 3}]}, "note": "kept"},
        {**good, "id": "last"},
    ]
    _, results = run(binary, lines)
    assert len(results) == len(lines) - 1  # the blank line is not a plan line
    ids = [r["id"] for r in results]
    assert ids == ["first", None, "no_cin", "str_cin", "frac_k", "bad_op", "zero_density", "big_density",
                   None, None, None, None, "extra_fields", "last"]
    assert "longer than" in results[-4]["error"]
    assert '"id" is missing' in results[-3]["error"]
    assert "error" not in results[-2]  # unknown fields, even nested ones, are ignored
    assert "error" not in results[0] and "error" not in results[-1]
    errors = {r["id"]: r.get("error", "") for r in results[2:-1] if r["id"]}
    assert "malformed JSON" in results[1]["error"]
    assert '"cin" is missing' in errors["no_cin"]
    assert '"cin"' in errors["str_cin"] and "string" in errors["str_cin"]
    assert '"k"' in errors["frac_k"] and "2.5" in errors["frac_k"]
    assert '"op"' in errors["bad_op"] and "deconv" in errors["bad_op"]
    assert '"density"' in errors["zero_density"] and '"density"' in errors["big_density"]


def test_impossible_layers_are_errors(binary: Path) -> None:
    lines = [
        layer("kernel_too_big", cin=4, cout=4, k=7, pad=0, h=5, w=5),
        layer("negative", cin=-3, cout=4, k=3, h=5, w=5),
        layer("huge", cin=512, cout=512, k=3, h=256, w=256),
        layer("sparse_dw", op="dwconv", cin=4, cout=4, k=3, h=5, w=5, impl="sparse"),
        layer("dw_mismatch", op="dwconv", cin=4, cout=8, k=3, h=5, w=5),
        layer("fine", cin=4, cout=4, k=3, h=5, w=5),
    ]
    _, results = run(binary, lines, FAST + ["--max-mb", "64"])
    errors = {r["id"]: r.get("error", "") for r in results}
    assert "larger than the padded input" in errors["kernel_too_big"]
    assert '"cin"' in errors["negative"] and "-3" in errors["negative"]
    assert "--max-mb" in errors["huge"]
    assert "sparse" in errors["sparse_dw"] and "dwconv" in errors["sparse_dw"]
    assert "cin == cout" in errors["dw_mismatch"]
    assert errors["fine"] == ""


def test_zero_tolerance_turns_rounding_error_into_an_error_result(binary: Path) -> None:
    line = layer("tight", cin=64, cout=8, k=3, h=8, w=8)
    _, (loose,) = run(binary, [line])
    _, (strict,) = run(binary, [line], FAST + ["--tolerance", "0"])
    assert loose["max_abs_err"] > 0
    assert "reference convolution" in strict["error"]


def test_same_line_measures_the_same_operator(binary: Path, tmp_path: Path) -> None:
    a = layer("a", cin=6, cout=5, k=3, h=7, w=7, density=0.37, impl="sparse")
    b = {**a, "id": "b"}
    other = {**a, "id": "other", "density": 0.5}
    _, first = run(binary, [a, b, other], FAST + ["--dump", str(tmp_path)])
    _, second = run(binary, [a], FAST)
    assert first[0]["max_abs_err"] == first[1]["max_abs_err"] == second[0]["max_abs_err"]
    for part in ("weights", "input", "output"):
        assert (tmp_path / f"a.{part}.f32").read_bytes() == (tmp_path / f"b.{part}.f32").read_bytes()
    assert (tmp_path / "a.weights.f32").read_bytes() != (tmp_path / "other.weights.f32").read_bytes()


def test_a_layer_times_alike_whatever_ran_before_it(binary: Path) -> None:
    """Buffers start on a cache line whatever the heap held before (runner 0.2.2): with malloc's 16-byte
    alignment this depthwise layer ran 1.4x slower in about three processes of four, depending on the lines
    before it. A coarse ratio: each process's fastest run, which noise only ever slows down."""
    target = layer("dw", op="dwconv", cin=64, cout=64, k=3, stride=2, h=112, w=112)
    before = [[], [layer("a", cin=67, cout=5, k=1, h=121, w=119)],
              [layer("b", cin=61, cout=3, k=1, h=127, w=113), layer("c", cin=9, cout=5, k=3, h=33, w=31)],
              [layer("d", cin=71, cout=7, k=1, h=117, w=123)], [layer("e", cin=65, cout=3, k=1, h=125, w=125)],
              [layer("f", cin=3, cout=5, k=3, h=17, w=19), layer("g", cin=69, cout=3, k=1, h=119, w=121)]]
    args = ["--warmup", "2", "--min-reps", "20", "--min-time-ms", "20"]
    fastest = [run(binary, lines + [target], args)[1][-1]["us_min"] for lines in before]
    assert max(fastest) / min(fastest) < 1.2, fastest
    assert run(binary, [target], ["--info"])[0]["runner"]["buffer_alignment"] == 64


def test_header_and_result_fields(binary: Path) -> None:
    header, (result,) = run(binary, [layer('we"ird \\ id ✓', cin=3, cout=3, k=1, h=2, w=2)])
    info = header["runner"]
    assert info["version"].startswith("0.2.") and info["xnnpack"] and info["cpu"] and info["arch"]
    assert info["xnnpack_initialized"] is True and "xnnpack_sparse" in info
    # Dense conv lines use the packed-LHS pf32 operator only where Arm SME makes ExecuTorch use it.
    assert isinstance(info["xnnpack_pf32"], bool) and not (SPARSE_ON_DEBIAN and info["xnnpack_pf32"])
    assert info["default_threads"] == len(os.sched_getaffinity(0))
    assert result["id"] == 'we"ird \\ id ✓'
    for key in ("impl", "threads", "us_min", "us_median", "us_mean", "us_std", "reps", "max_abs_err", "timed_us",
                "xnnpack"):
        assert key in result
    assert result["us_min"] <= result["us_median"] and result["reps"] >= 2
    assert result["timed_us"] >= result["us_min"] * result["reps"]


def test_info_flags_and_plan_file(binary: Path, tmp_path: Path) -> None:
    info = subprocess.run([str(binary), "--info"], capture_output=True, text=True, timeout=30)
    assert info.returncode == 0 and len(info.stdout.splitlines()) == 1
    assert "runner" in json.loads(info.stdout)

    missing = subprocess.run([str(binary), "--plan", str(tmp_path / "nope.jsonl")], capture_output=True, text=True)
    assert missing.returncode != 0 and "cannot read the plan" in missing.stderr

    bad_flag = subprocess.run([str(binary), "--affinity", "zz"], capture_output=True, text=True)
    assert bad_flag.returncode == 2 and "--affinity" in bad_flag.stderr

    plan = tmp_path / "plan.jsonl"
    plan.write_text(json.dumps(layer("from_file", cin=2, cout=2, k=1, h=3, w=3)) + "\n")
    done = subprocess.run([str(binary), "--plan", str(plan), "--affinity", "1", *FAST],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    assert json.loads(done.stdout.splitlines()[1])["id"] == "from_file"
    # --affinity narrows what the header calls the default thread count.
    assert json.loads(done.stdout.splitlines()[0])["runner"]["default_threads"] == 1


def test_runner_paths_explain_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(runner.DeviceError, match="make runner"):
        runner.host_binary(tmp_path / "convbench")
    with pytest.raises(runner.DeviceError, match="make runner-android"):
        runner.android_bundle_dir(tmp_path)
    (tmp_path / "manifest.json").write_text('{"version": "0", "files": {"convbench": "00"}}')
    with pytest.raises(runner.DeviceError, match="lacks convbench"):
        runner.android_bundle_dir(tmp_path)
    (tmp_path / "manifest.json").write_text("not json")
    with pytest.raises(runner.DeviceError, match="unreadable"):
        runner.bundle_manifest(tmp_path)
    with pytest.raises(runner.RunnerOutputError):
        runner.parse_output_line("Segmentation fault")
    assert runner.is_header(runner.parse_output_line('{"runner": {"version": "1"}}'))
