"""Program specs on the sparse engine (profiler/program_net.py, profiler/engine_plan.py): a spec's network file
reproduces its pruned torch module through the engine, runs exactly the layers the plan says sparse, and the
engine's own `conversions` count equals the plan's replay on zoo programs of every engine family, whose layout
cases (dense stem before sparse layers, NCHW depthwise chains, additions across segments) differ.

Requires `make -C android_harness/native host` beforehand; never builds it."""
import json
import os
import subprocess

import numpy as np
import pytest
import torch

from jcw.android_harness.runner import HOST_BINARY
from jcw.profiler import engine_plan, program_build, program_net, program_zoo, programs, sparse_programs
from jcw.profiler.netfile import read_net

PTEBENCH = HOST_BINARY.parent / "ptebench"
FAST = ["--warmup", "0", "--min-reps", "1", "--min-time-ms", "0"]


@pytest.fixture(scope="module", autouse=True)
def engine_built():
    if not os.access(PTEBENCH, os.X_OK):
        pytest.fail(f"the host runner {PTEBENCH} is not built; run `make -C android_harness/native host`")


def run_engine(paths, dump=None):
    lines = "".join(json.dumps({"id": str(i), "net": str(p), "threads": 1}) + "\n" for i, p in enumerate(paths))
    args = [str(PTEBENCH), *FAST] + (["--dump", str(dump)] if dump else [])
    done = subprocess.run(args, input=lines, capture_output=True, text=True, timeout=600, check=True)
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return [r for r in results if "runner" not in r]


def mixed_spec():
    """Dense stem, sparse 1x1, depthwise, an addition of a sparse and a dense branch, max pool, classifier."""
    return programs.validate({"name": "mixed", "family": "mixed", "input": [1, 3, 20, 20], "nodes": [
        {"name": "stem", "op": "conv", "cout": 16, "k": 3, "stride": 2, "act": "relu"},
        {"name": "expand", "op": "conv", "cout": 24, "k": 1, "density": 0.3, "act": "relu6"},
        {"name": "dw", "op": "conv", "cout": 24, "k": 3, "groups": 24, "act": "relu"},
        {"name": "project", "op": "conv", "cout": 16, "k": 1, "density": 0.5},
        {"name": "dense", "op": "conv", "cout": 16, "k": 3, "inputs": ["stem"]},
        {"name": "add", "op": "add", "inputs": ["project", "dense"], "act": "relu"},
        {"name": "pool", "op": "maxpool", "k": 3, "stride": 2, "pad": 1},
        {"name": "wide", "op": "conv", "cout": 32, "k": 3, "density": 0.2, "act": "relu"},
        {"name": "gap", "op": "gap"}, {"name": "flat", "op": "flatten"},
        {"name": "fc", "op": "linear", "cout": 7}]})


def test_a_spec_runs_on_the_engine_as_its_pruned_torch_module(tmp_path):
    spec = mixed_spec()
    built = program_net.export_net(spec, tmp_path / "mixed.jcwnet", seed=3)
    assert built["sparse_layers"] == ["expand", "project", "wide"]
    net = read_net(tmp_path / "mixed.jcwnet")
    # the file's weights are the torch module's, pruned to each layer's density
    assert abs(float(np.count_nonzero(net.tensors["wide.weight"])) / net.tensors["wide.weight"].size - 0.2) < 0.01
    (result,) = run_engine([tmp_path / "mixed.jcwnet"], dump=tmp_path)
    assert "error" not in result, result
    assert result["runtime"] == "sparse" and result["sparse_layers"] == built["sparse_layers"]
    # the engine checked its output against the file's reference; compare with torch here too, independently
    output = np.fromfile(tmp_path / "0.output.f32", dtype="<f4")
    with torch.no_grad():
        reference = program_build.to_torch(spec, 3)(program_build.example_input(spec, 3)).numpy().ravel()
    assert output.shape == reference.shape
    assert np.max(np.abs(output - reference)) <= 1e-3 * max(1.0, float(np.max(np.abs(reference))))
    assert result["conversions"] == engine_plan.spec_plan(spec)["conversions"]


def test_engine_conversions_equal_the_plan_replay_on_zoo_programs(tmp_path):
    rng = np.random.default_rng(7)
    specs = [mixed_spec()]
    for family in sparse_programs.ENGINE_FAMILIES:
        base = program_zoo.zoo_program(family, 0.25, 64)
        specs.append(sparse_programs.with_densities(base, sparse_programs.random_densities(base, rng)))
    # all sparse (MobileNetV1: no conversion at all) and all dense (the input only: a classifier's [1, C] output
    # is the same bytes in both layouts)
    v1 = program_zoo.zoo_program("mobilenet_v1", 0.25, 64)
    specs.append(sparse_programs.with_densities(v1, {name: 0.5 for name in sparse_programs.density_range(v1)}))
    specs.append(v1)
    paths = [tmp_path / f"{i}.jcwnet" for i in range(len(specs))]
    for spec, path in zip(specs, paths):
        program_net.export_net(spec, path)
    results = run_engine(paths)
    planned = [engine_plan.spec_plan(spec) for spec in specs]
    assert [r.get("error") for r in results] == [None] * len(specs)
    assert [r["conversions"] for r in results] == [p["conversions"] for p in planned]
    assert [sorted(r["sparse_layers"]) for r in results] == [sorted(p["sparse"]) for p in planned]
    assert planned[-2]["conversions"] == 0 and planned[-1]["conversions"] == 1
    assert len({p["conversions"] for p in planned}) >= 4  # the programs exercise different layouts
    assert any(p["nchw_depthwise"] for p in planned)


def test_a_spec_the_engine_cannot_run_is_one_sentence(tmp_path):
    spec = program_zoo.zoo_program("squeezenet_lite", 0.25, 64)
    with pytest.raises(program_build.ProgramBuildError, match="cannot run program node 'fire2.cat' \\(concat\\)"):
        program_net.export_net(spec, tmp_path / "s.jcwnet")
    assert not list(tmp_path.iterdir())
