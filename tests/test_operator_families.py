"""Training-only operator families: valid at every plan resolution and genome, carrying the operators they
exist for, joining only the training sample from their own stream (so they never change which zoo, held-out
or unseen programs a plan holds), and exporting fully delegated with the output torch computes."""
from collections import Counter

import numpy as np
import pytest

from jcw.profiler import program_zoo as zoo
from jcw.profiler.operator_families import OPERATOR_FAMILIES
from jcw.profiler.programs import shapes, validate


@pytest.mark.parametrize("family", OPERATOR_FAMILIES)
def test_each_family_is_valid_at_every_plan_resolution_and_at_random_genomes(family):
    assert family not in zoo.TRAIN_FAMILIES + zoo.UNSEEN_FAMILIES
    rng = np.random.default_rng(5)
    for resolution in zoo.RESOLUTIONS:
        for spec in (zoo.zoo_program(family, resolution=resolution), zoo.random_program(family, rng, resolution)):
            assert validate(spec) == spec and spec["family"] == family
            assert shapes(spec)[spec["nodes"][-1]["name"]] == (1000, 1, 1)


def test_the_families_carry_the_operators_the_plan_families_lack():
    ops = Counter()
    wide_cat = flat_fc = 0
    for family in OPERATOR_FAMILIES:
        spec = zoo.zoo_program(family, resolution=224)
        dims = shapes(spec)
        ops.update(n["op"] for n in spec["nodes"])
        wide_cat += sum(len(n["inputs"]) > 5 for n in spec["nodes"] if n["op"] == "concat")
        flat_fc += sum(n["op"] == "linear" and dims[n["inputs"][0]][0] > 2048 for n in spec["nodes"])
    assert ops["concat"] >= 10 and ops["relu"] >= 8 and ops["maxpool"] >= 10 and ops["linear"] >= 3
    assert wide_cat >= 3, "concatenations of more than 5 inputs, which ExecuTorch splits into a chain"
    assert flat_fc >= 1, "a linear layer fed by a flatten of thousands of features"


def test_operator_programs_join_training_only_and_leave_the_other_programs_alone():
    without = zoo.program_plan(12, 10, 10, seed=3)
    with_ops = zoo.program_plan(12, 10, 10, seed=3, n_operator=8)
    assert sorted((s["name"], sample) for s, sample in with_ops if s["family"] not in OPERATOR_FAMILIES) == \
        sorted((s["name"], sample) for s, sample in without)
    extra = [(s, sample) for s, sample in with_ops if s["family"] in OPERATOR_FAMILIES]
    assert len(extra) == 8 and {sample for _, sample in extra} == {"train"}
    assert {s["family"] for s, _ in extra} == set(OPERATOR_FAMILIES), "every family gets its share"
    assert with_ops == zoo.program_plan(12, 10, 10, seed=3, n_operator=8)
    more = zoo.program_plan(12, 10, 10, seed=3, n_operator=12)
    assert [s for s, _ in extra] == [s for s, _ in more if s["family"] in OPERATOR_FAMILIES][:8]
    with pytest.raises(zoo.ProgramZooError, match="n_operator"):
        zoo.program_plan(1, 1, 1, n_operator=-1)


@pytest.mark.slow
@pytest.mark.parametrize("family", OPERATOR_FAMILIES)
def test_each_family_exports_fully_delegated_and_matches_torch(tmp_path, family):
    torch = pytest.importorskip("torch")
    from executorch.runtime import Runtime

    from jcw.profiler.program_build import example_input, export_pte, reference_output

    spec = zoo.random_program(family, np.random.default_rng(2), 64)
    report = export_pte(spec, tmp_path / "p.pte")
    assert report["partitions"] == 1 and report["undelegated_ops"] == []
    method = Runtime.get().load_program(report["path"]).load_method("forward")
    out = method.execute([example_input(spec)])[0]
    assert torch.allclose(out, reference_output(spec), rtol=0, atol=1e-3)
