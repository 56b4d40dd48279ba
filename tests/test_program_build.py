"""Program specs made real: torch modules whose tensors have the shapes profiler.programs infers, seeded
weights, and .pte exports that executorch.runtime runs to the torch result, fully delegated to XNNPACK."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jcw.profiler import program_zoo as zoo  # noqa: E402
from jcw.profiler.program_build import (  # noqa: E402
    ProgramBuildError,
    example_input,
    export_pte,
    quiet_executorch,
    reference_output,
    to_torch,
)
from jcw.profiler.programs import shapes, validate  # noqa: E402

#: Every operator of the spec: conv (dense, depthwise, fused relu/relu6), add, relu, relu6, both pools,
#: gap, flatten, concat of three, linear after flatten and linear after gap.
TINY = {"name": "tiny", "input": [1, 3, 16, 16], "nodes": [
    {"name": "c1", "op": "conv", "cout": 8, "k": 3, "stride": 2, "act": "relu"},
    {"name": "dw", "op": "conv", "cout": 8, "k": 3, "groups": 8, "act": "relu6"},
    {"name": "pw", "op": "conv", "cout": 8, "k": 1, "density": 0.5},
    {"name": "sum", "op": "add", "inputs": ["pw", "c1"], "act": "relu"},
    {"name": "r6", "op": "relu6"},
    {"name": "mp", "op": "maxpool", "k": 3, "stride": 2, "pad": 1},
    {"name": "ap", "op": "avgpool", "k": 3, "stride": 1, "inputs": ["sum"]},
    {"name": "ap2", "op": "avgpool", "k": 3, "stride": 1, "inputs": ["ap"]},
    {"name": "b", "op": "conv", "cout": 4, "k": 1, "inputs": ["mp"]},
    {"name": "cat", "op": "concat", "inputs": ["mp", "b", "ap2"]},
    {"name": "r", "op": "relu"},
    {"name": "g", "op": "gap"},
    {"name": "fc0", "op": "linear", "cout": 6, "act": "relu"},
    {"name": "flat", "op": "flatten", "inputs": ["cat"]},
    {"name": "fc1", "op": "linear", "cout": 10},
]}


def _shape_of(tensor) -> tuple:
    dims = tuple(tensor.shape[1:])
    return dims + (1,) * (3 - len(dims))


def _check_shapes(spec):
    spec = validate(spec)
    module = to_torch(spec)
    with torch.no_grad():
        values = module.node_outputs(example_input(spec))
    expected = shapes(spec)
    assert {name: _shape_of(v) for name, v in values.items()} == expected
    out = values[spec["nodes"][-1]["name"]]
    assert torch.isfinite(out).all() and 0.05 < float(out.pow(2).mean().sqrt()) < 20
    return values


def test_tiny_spec_shapes_and_every_operator():
    values = _check_shapes(TINY)
    assert values["fc1"].shape == (1, 10) and values["fc0"].shape == (1, 6, 1, 1)


@pytest.mark.parametrize("family", zoo.FAMILIES)
def test_family_shapes_match_torch(family):
    rng = np.random.default_rng(11)
    _check_shapes(zoo.zoo_program(family, resolution=64))
    for _ in range(3):
        _check_shapes(zoo.random_program(family, rng, resolution=int(rng.choice([32, 64, 96]))))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["resnet50", "mobilenet_v2", "densenet_lite"])
def test_deep_networks_stay_finite_at_224(family):
    spec = zoo.zoo_program(family)
    values = _check_shapes(spec)
    assert max(float(v.abs().max()) for v in values.values()) < 100


def test_weights_are_seeded_and_pruned_by_magnitude():
    a, b, c = to_torch(TINY, seed=1), to_torch(TINY, seed=1), to_torch(TINY, seed=2)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb) and not torch.equal(pa, pc), name
    pw = a.layers[a.keys["pw"]].weight
    assert int((pw == 0).sum()) == pw.numel() // 2
    dense = a.layers[a.keys["c1"]].weight
    assert int((dense == 0).sum()) == 0
    assert torch.equal(reference_output(TINY, 1), reference_output(TINY, 1))
    x = example_input(TINY, 3)
    assert x.shape == (1, 3, 16, 16) and float(x.min()) >= -1 and float(x.max()) < 1


def test_bad_spec_is_one_sentence():
    with pytest.raises(ProgramBuildError, match="'op' must be one of"):
        to_torch({"input": [1, 3, 8, 8], "nodes": [{"op": "softmax"}]})


def _run_pte(path, x):
    with quiet_executorch():
        from executorch.runtime import Runtime
        method = Runtime.get().load_program(path).load_method("forward")
    return method.execute([x])[0]


@pytest.mark.slow
def test_export_runs_in_executorch_fully_delegated(tmp_path):
    path = tmp_path / "sub" / "tiny.pte"
    report = export_pte(TINY, path, seed=4)
    assert report["path"] == path and path.stat().st_size == report["bytes"] > 0
    assert report["partitions"] == 1 and report["undelegated_ops"] == [] and report["export_s"] > 0
    assert [p.name for p in path.parent.iterdir()] == ["tiny.pte"]  # no temporary file left behind
    out = _run_pte(path, example_input(TINY, 4))
    assert torch.allclose(out, reference_output(TINY, 4), rtol=0, atol=1e-4)


@pytest.mark.slow
def test_padded_avgpool_is_not_delegated(tmp_path):
    """XNNPACK takes a padded average pool only without count_include_pad; the spec's avgpool counts the
    padding (PyTorch's default), so ExecuTorch runs it with a portable kernel between two partitions."""
    spec = {"input": [1, 3, 16, 16], "nodes": [
        {"name": "c", "op": "conv", "cout": 8, "k": 3, "act": "relu"},
        {"name": "p", "op": "avgpool", "k": 3, "stride": 2, "pad": 1},
        {"name": "d", "op": "conv", "cout": 8, "k": 1}]}
    report = export_pte(spec, tmp_path / "p.pte")
    assert report["undelegated_ops"] == ["avg_pool2d"] and report["partitions"] == 2
    out = _run_pte(report["path"], example_input(spec))
    assert torch.allclose(out, reference_output(spec), rtol=0, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("family", zoo.FAMILIES)
def test_every_family_exports_fully_delegated(tmp_path, family):
    spec = zoo.random_program(family, np.random.default_rng(2), resolution=64)
    report = export_pte(spec, tmp_path / "f.pte")
    assert (report["partitions"], report["undelegated_ops"]) == (1, [])
    out = _run_pte(report["path"], example_input(spec))
    assert torch.allclose(out, reference_output(spec), rtol=0, atol=1e-4)


def test_export_failures(tmp_path, monkeypatch):
    with pytest.raises(ProgramBuildError, match="'op' must be one of"):
        export_pte({"input": [1, 3, 8, 8], "nodes": [{"op": "softmax"}]}, tmp_path / "x.pte")
    import torch.export

    def broken(*args, **kwargs):
        raise RuntimeError("cannot trace\nsecond line")
    monkeypatch.setattr(torch.export, "export", broken)
    with pytest.raises(ProgramBuildError, match=r"^ExecuTorch export of program 'tiny' failed "
                                                r"\(RuntimeError: cannot trace\)$"):
        export_pte(TINY, tmp_path / "x.pte")
    assert os.listdir(tmp_path) == []


def test_unwritable_path_is_an_os_error(tmp_path):
    """A disk problem is the caller's to report, not a failure of this program."""
    from jcw.profiler.program_build import _write_atomically
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        _write_atomically(blocker / "x.pte", b"data")
    _write_atomically(tmp_path / "d" / "x.pte", b"data")
    assert (tmp_path / "d" / "x.pte").read_bytes() == b"data" and os.listdir(tmp_path / "d") == ["x.pte"]
