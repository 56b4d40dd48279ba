"""XNNPACK's own sparse inference in the sparse engine (android_harness/native/net_cluster.cpp) and its replay
(profiler/engine_plan.py): which networks qualify, when the device's XNNPACK rewrites them (the runner's header
probe), what the engine then runs (every 1x1 with SpMM, every depthwise NCHW, one input conversion), and that the
predictor's and the search's plans say the same as the engine — on this host, where XNNPACK does not rewrite on
x86 with AVX, and on the arm64 bundle under qemu, where it does.

Requires `make -C android_harness/native host` (and for the qemu test the android bundle); never builds them."""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import torch

from arm64_bundle import arm64_bundle
from jcw.android_harness import runner
from jcw.android_harness.runner import HOST_BINARY
from jcw.predictor.persistence import Predictor
from jcw.profiler import engine_plan, program_net, program_zoo, sparse_programs
from jcw.search import zoo
from jcw.search.genome import SearchSpace
from jcw.search.graph import read_model
from jcw.search.objectives import LatencyModel
from test_program_model import CARD, fitted_program_model, layer_model  # noqa: F401
from test_sparse_program_model import fitted_sparse_model

PTEBENCH = HOST_BINARY.parent / "ptebench"
FAST = ["--warmup", "0", "--min-reps", "1", "--min-time-ms", "0"]


def mobilenet(family: str, density: float, width: float = 0.25, size: int = 32, stem: float = 1.0) -> dict:
    """A zoo MobileNet program with `density` on every 1x1 convolution of its cluster (head dense, stem at
    `stem`)."""
    base = program_zoo.zoo_program(family, width, size)
    cluster = engine_plan.xnnpack_cluster(base["nodes"], 3)
    return sparse_programs.with_densities(base, {cluster["stem"]: stem,
                                                 **{name: density for name in cluster["pointwise"]}})


def run(command: list[str], lines: list[dict], env: dict | None = None) -> tuple[dict, list[dict]]:
    text = "".join(json.dumps(line) + "\n" for line in lines)
    done = subprocess.run(command + FAST, input=text, capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-2000:]
    out = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return out[0]["runner"], out[1:]


# ---- the replay ---------------------------------------------------------------------------------------
def test_mobilenets_qualify_and_networks_with_other_operators_do_not():
    for family in ("mobilenet_v1", "mobilenet_v2"):
        spec = program_zoo.zoo_program(family, 0.5, 64)
        cluster = engine_plan.xnnpack_cluster(spec["nodes"], 3)
        convs = [n for n in spec["nodes"] if n["op"] == "conv"]
        assert cluster is not None
        assert cluster["pointwise"] == [n["name"] for n in convs if n["k"] == 1]
        assert cluster["depthwise"] == [n["name"] for n in convs if n.get("groups", 1) > 1]
        assert [n["op"] for n in spec["nodes"][cluster["end"]:]] in (["flatten", "linear"], ["linear"])
        assert engine_plan.xnnpack_cluster(spec["nodes"], 1) is None  # the stem must read 3 channels
    resnet = program_zoo.zoo_program("resnet18", 0.5, 64)
    assert engine_plan.xnnpack_cluster(resnet["nodes"], 3) is None  # 7x7 stem, 3x3 convolutions, max pool


def test_the_rewrite_needs_more_than_two_thirds_zeros_over_all_1x1_weights():
    weights = np.array([[100, 300], [100, 300], [100, 300]])
    densities = np.array([[1.0, 0.1], [0.0, 0.5], [0.4, 0.3]])  # zeros: 270, 250, 270 of 400
    assert engine_plan.xnnpack_rewrites(weights, densities).tolist() == [True, False, True]
    assert not engine_plan.xnnpack_rewrites(np.array([[3]]), np.array([[1 / 3]]))[0]  # exactly 2/3 is not more


def test_the_plan_runs_a_rewritten_cluster_inside_xnnpack_and_the_rest_as_before():
    low, half = mobilenet("mobilenet_v1", 0.1, stem=0.8), mobilenet("mobilenet_v1", 0.5)
    cluster = engine_plan.xnnpack_cluster(low["nodes"], 3)
    plan = engine_plan.spec_plan(low, xnnpack_sparse_inference=True)  # the pruned stem runs dense there
    assert plan["path"] == "xnnpack" and plan["conversions"] == 1
    assert plan["conversion_elems"] == 3 * 32 * 32                # the input, for the stem's NHWC read
    assert plan["sparse"] == set(cluster["pointwise"]) and plan["nchw_depthwise"] == set(cluster["depthwise"])
    segments = engine_plan.spec_plan(low)
    assert segments["path"] == "segments" and segments["conversions"] == 0  # sparse stem: NCHW all the way
    assert segments["sparse"] == {cluster["stem"], *cluster["pointwise"]}
    # below XNNPACK's threshold, or on a device that does not rewrite, the engine runs segments as before
    assert engine_plan.spec_plan(half, True) == {**engine_plan.spec_plan(half), "path": "segments"}
    dense = program_zoo.zoo_program("mobilenet_v1", 0.25, 32)
    assert engine_plan.spec_plan(dense, True)["path"] is None


def test_the_searchs_plan_matches_the_engines_replay_on_a_rewriting_device(layer_model):  # noqa: F811
    card = {**CARD, "program_runner": {"xnnpack_sparse_inference": True}}
    predictor = Predictor(layer_model, card, None, fitted_program_model(layer_model), fitted_sparse_model(layer_model))
    assert predictor.xnnpack_sparse_inference
    model, _ = zoo.build("mobilenet_v2")
    space = SearchSpace(read_model(model, torch.randn(1, 3, 64, 64)), name="mobilenet_v2")
    rng = np.random.default_rng(3)
    X = np.vstack([space.uniform(1.0, 1.0), space.uniform(1.0, 0.1), space.uniform(0.5, 0.6),
                   rng.integers(space.xl, space.xu + 1, size=(5, space.n_var))])
    specs = [space.program_spec(x) for x in X]
    latency = LatencyModel(predictor, space, "sparse")
    by = latency.by_runtime(X)
    np.testing.assert_allclose(by["sparse"], predictor.predict_programs(specs, runtime="sparse")["latency_ms"],
                               rtol=1e-9)
    names = [layer.name for layer in space.graph.layers]
    vectorised = space.program.engine.plan(space.channels(X), space.densities(X), True)
    paths = []
    for i, spec in enumerate(specs):
        plan = engine_plan.spec_plan(spec, True)
        paths.append(plan["path"])
        assert {n for n, s in zip(names, by["sparse_layers"][i]) if s} == plan["sparse"]
        assert {n for n, s in zip(names, by["nchw_layers"][i]) if s} == plan["nchw_depthwise"]
        assert (vectorised["layout"]["conversions"][i], vectorised["layout"]["conversion_elems"][i]) == (
            plan["conversions"], plan["conversion_elems"])
        assert vectorised["xnnpack"][i] == (plan["path"] == "xnnpack")
    assert paths[0] is None and paths[1] == "xnnpack" and "segments" in paths


# ---- the engine ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def host_engine():
    if not os.access(PTEBENCH, os.X_OK):
        pytest.fail(f"the host runner {PTEBENCH} is not built; run `make -C android_harness/native host`")
    return [str(PTEBENCH)]


def test_the_host_engine_says_why_it_runs_segments_and_refuses_a_forced_path_it_cannot_take(tmp_path, host_engine):
    low, half = mobilenet("mobilenet_v1", 0.1), mobilenet("mobilenet_v1", 0.5)
    for name, spec in (("low", low), ("half", half)):
        program_net.export_net(spec, tmp_path / f"{name}.jcwnet", seed=1)
    lines = [{"id": f"{name}-{path}", "net": str(tmp_path / f"{name}.jcwnet"), "threads": 1, "sparse_path": path}
             for name in ("low", "half") for path in ("auto", "xnnpack", "segments")]
    lines.append({"id": "bad", "net": str(tmp_path / "low.jcwnet"), "sparse_path": "fastest"})
    header, results = run(host_engine, lines)
    out = {r["id"]: r for r in results}
    rewrites = header["xnnpack_sparse_inference"]
    assert rewrites is (header["arch"] != "x86_64")               # XNNPACK never rewrites on AVX machines
    assert out["low-auto"]["sparse_path"] == ("xnnpack" if rewrites else "segments")
    assert out["low-auto"]["conversions"] == engine_plan.spec_plan(low, rewrites)["conversions"]
    assert out["low-segments"]["sparse_path"] == "segments" and out["low-segments"]["not_xnnpack"] is None
    assert out["low-segments"]["conversions"] == engine_plan.spec_plan(low)["conversions"]
    why = out["half-auto"]["not_xnnpack"]
    assert "needs more than 2/3" in why and "50.0% of its 1x1" in why
    assert "cannot run with XNNPACK's sparse inference here" in out["half-xnnpack"]["error"]
    if not rewrites:
        assert "did not rewrite it to NCHW on this CPU" in out["low-auto"]["not_xnnpack"]
        assert "did not rewrite it to NCHW" in out["low-xnnpack"]["error"]
    assert "\"sparse_path\" must be" in out["bad"]["error"]


@pytest.mark.slow
def test_the_arm64_engine_runs_qualifying_mobilenets_in_xnnpacks_sparse_inference(tmp_path):
    bundle = arm64_bundle()
    specs = {"v1-low": mobilenet("mobilenet_v1", 0.1, stem=0.8), "v2-low": mobilenet("mobilenet_v2", 0.1),
             "v1-half": mobilenet("mobilenet_v1", 0.5)}
    lines = []
    for name, spec in specs.items():
        program_net.export_net(spec, tmp_path / f"{name}.jcwnet", seed=2)
        lines += [{"id": f"{name}/{path}", "net": str(tmp_path / f"{name}.jcwnet"), "threads": 1, "sparse_path": path}
                  for path in ("auto", "segments")]
    header, results = run(["sh", str(bundle / runner.PTEBENCH_LAUNCHER)], lines,
                          env={"CONVBENCH_EMULATOR": runner.QEMU_AARCH64})
    assert header["arch"] == "aarch64" and header["xnnpack_sparse_inference"] is True
    for r in results:
        assert r.get("error") is None, r                          # each checked against torch's output first
        name, path = r["id"].split("/")
        plan = engine_plan.spec_plan(specs[name], path == "auto")
        assert r["sparse_path"] == plan["path"]
        assert (r["conversions"], sorted(r["sparse_layers"])) == (plan["conversions"], sorted(plan["sparse"]))
        assert r["xnnpack_sparse"] == r["xnnpack"]               # the wheel's own SpMM either way
    by_id = {r["id"]: r for r in results}
    assert by_id["v1-low/auto"]["sparse_path"] == "xnnpack" and by_id["v2-low/auto"]["conversions"] == 1
    assert "needs more than 2/3" in by_id["v1-half/auto"]["not_xnnpack"]
