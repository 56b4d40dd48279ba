"""Operator-probe programs: valid, deterministic, covering every operator the program model prices, joining
only the training sample without changing which zoo programs a plan holds, and exporting fully delegated."""
from collections import Counter

import numpy as np
import pytest

from jcw.profiler import program_zoo as zoo
from jcw.profiler.program_probes import PROBE_FAMILY, random_probe
from jcw.profiler.programs import shapes, validate


def test_probes_are_valid_deterministic_and_cover_every_operator():
    a = [random_probe(np.random.default_rng([7, i]), 160) for i in range(60)]
    b = [random_probe(np.random.default_rng([7, i]), 160) for i in range(60)]
    assert a == b
    ops = Counter()
    for spec in a:
        assert validate(spec) == spec and spec["family"] == PROBE_FAMILY
        out = shapes(spec)[spec["nodes"][-1]["name"]]
        assert out == (1000, 1, 1)
        ops.update(n["op"] + ("/dw" if n.get("groups", 1) > 1 else "") for n in spec["nodes"])
        assert all(s[1] <= 14 for s in [shapes(spec)[n["inputs"][0]] for n in spec["nodes"]
                                         if n["op"] in ("gap", "flatten")])
    for op in ("conv", "conv/dw", "add", "concat", "relu", "relu6", "maxpool", "avgpool", "gap", "flatten",
               "linear"):
        assert ops[op] >= 5, op
    assert any(len(n["inputs"]) >= 3 for s in a for n in s["nodes"] if n["op"] == "concat")
    assert {n["k"] for s in a for n in s["nodes"] if n.get("groups", 1) > 1} == {3, 5}


def test_probes_join_training_only_and_leave_the_zoo_programs_alone():
    without = zoo.program_plan(12, 10, 10, seed=3)
    with_probes = zoo.program_plan(12, 10, 10, seed=3, n_probe=4)
    key = [(s["name"], sample) for s, sample in without]
    kept = [(s["name"], sample) for s, sample in with_probes if s["family"] != PROBE_FAMILY]
    assert sorted(kept) == sorted(key)
    probes = [(s, sample) for s, sample in with_probes if s["family"] == PROBE_FAMILY]
    assert len(probes) == 4 and {sample for _, sample in probes} == {"train"}
    assert with_probes == zoo.program_plan(12, 10, 10, seed=3, n_probe=4)
    more = zoo.program_plan(12, 10, 10, seed=3, n_probe=6)
    assert [s for s, _ in probes] == [s for s, _ in more if s["family"] == PROBE_FAMILY][:4]
    with pytest.raises(zoo.ProgramZooError, match="n_probe"):
        zoo.program_plan(1, 1, 1, n_probe=-1)


@pytest.mark.slow
def test_probes_export_fully_delegated_and_match_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from executorch.runtime import Runtime

    from jcw.profiler.program_build import example_input, export_pte, reference_output

    for i in range(3):
        spec = random_probe(np.random.default_rng([11, i]), 64)
        report = export_pte(spec, tmp_path / f"p{i}.pte")
        assert report["undelegated_ops"] == [] or report["undelegated_ops"] == ["avg_pool2d"]
        method = Runtime.get().load_program(report["path"]).load_method("forward")
        out = method.execute([example_input(spec)])[0]
        assert torch.allclose(out, reference_output(spec), rtol=0, atol=1e-3)
