"""Program-spec generators: the plan families match profiler/networks.py, genomes follow the coupling
rules, the unseen families are valid, and program_plan is deterministic with disjoint samples."""
import math
import subprocess
import sys

import numpy as np
import pytest

from jcw.profiler import program_zoo as zoo
from jcw.profiler.networks import NETWORKS, network_layers
from jcw.profiler.programs import conv_layers, other_ops, program_id, shapes, validate


def test_import_needs_no_torch():
    code = ("import sys, jcw.profiler.program_zoo, jcw.profiler.program_build; "
            "assert 'torch' not in sys.modules and 'executorch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_families_are_named_like_the_layer_plans():
    assert zoo.TRAIN_FAMILIES == NETWORKS
    assert len(zoo.UNSEEN_FAMILIES) >= 4 and not set(zoo.UNSEEN_FAMILIES) & set(zoo.TRAIN_FAMILIES)


@pytest.mark.parametrize("family", NETWORKS)
def test_full_width_layers_equal_networks_json(family):
    ours = [(name, s.op, s.cin, s.cout, s.k, s.stride, s.h, s.w) for name, s in conv_layers(zoo.zoo_program(family))]
    theirs = [(d["name"], d["op"], d["cin"], d["cout"], d["k"], d["stride"], d["h"], d["w"])
              for d in network_layers(family)]
    assert ours == theirs


@pytest.mark.parametrize("family", zoo.FAMILIES)
def test_every_family_is_valid_at_every_resolution(family):
    for resolution in (32, *zoo.RESOLUTIONS):
        spec = zoo.zoo_program(family, resolution=resolution)
        assert validate(spec) == spec
        assert spec["input"] == [1, 3, resolution, resolution] and spec["family"] == family
        assert shapes(spec)[spec["nodes"][-1]["name"]] == (1000, 1, 1)


@pytest.mark.parametrize("family", zoo.FAMILIES)
def test_random_genomes_follow_the_coupling_rules(family):
    rng = np.random.default_rng(5)
    full = {name: layer for name, layer in conv_layers(zoo.zoo_program(family))}
    groups = dict(zoo.family_groups(family))
    for _ in range(5):
        widths = zoo.random_widths(family, rng)
        assert set(widths) == set(groups) and set(widths.values()) <= set(zoo.WIDTH_STEPS)
        spec = zoo.zoo_program(family, widths, 64)
        layers = dict(conv_layers(spec))
        first = next(iter(layers.values()))
        assert first.cin == 3
        assert shapes(spec)[spec["nodes"][-1]["name"]][0] == 1000
        expected = {max(1, math.floor(widths[g] * c + 0.5)) for g, c in groups.items()}
        for name, layer in layers.items():
            if full[name].op == "dwconv":  # depthwise: tied to its input
                assert layer.cin == layer.cout
            elif full[name].cout == 1000 and name in ("fc", "classifier"):
                assert layer.cout == 1000  # classifier outputs are fixed
            else:
                assert layer.cout in expected
        for op in other_ops(spec):  # add operands agree (validate checked it) and keep the channels
            if op["op"] == "add":
                assert op["out_c"] == op["c"]


def test_widths_forms_and_rounding():
    groups = zoo.family_groups("resnet18")
    assert groups[0] == ("stage1", 64) and len(groups) == 12
    half = zoo.zoo_program("resnet18", 0.5)
    assert half == zoo.zoo_program("resnet18", [0.5] * 12) == zoo.zoo_program("resnet18", dict.fromkeys(
        [g for g, _ in groups], 0.5))
    layers = dict(conv_layers(zoo.zoo_program("resnet18", {"layer1.0.mid": 0.3})))
    assert layers["layer1.0.conv1"].cout == 19 and layers["layer1.0.conv2"].cin == 19  # round(19.2)
    assert layers["layer1.0.conv2"].cout == 64
    tiny = dict(conv_layers(zoo.zoo_program("mobilenet_v2", 0.1)))
    assert tiny["block0.dw"].cin == tiny["block0.dw"].cout == 3  # round(3.2); depthwise tied to the stem
    assert tiny["fc"].cout == 1000 and tiny["conv1"].cin == 3
    assert zoo.zoo_program("resnet18")["name"] == "resnet18-224-full"
    assert half["name"].startswith("resnet18-224-") and half["name"] != "resnet18-224-full"


def test_residual_stage_shares_one_group():
    layers = dict(conv_layers(zoo.zoo_program("resnet50", {"stage2": 0.5})))
    for name in ("layer2.0.conv3", "layer2.0.downsample", "layer2.1.conv3", "layer2.3.conv3"):
        assert layers[name].cout == 256
    assert layers["layer3.0.conv1"].cin == 256 and layers["layer3.0.downsample"].cin == 256


@pytest.mark.parametrize("bad, message", [
    (dict(family="alexnet"), "program family must be one of"),
    (dict(family="resnet18", widths=1.5), "must be in (0, 1]"),
    (dict(family="resnet18", widths=[0.5] * 3), "12 channel groups, got 3"),
    (dict(family="resnet18", widths={"nope": 0.5}), "no channel group 'nope'"),
    (dict(family="resnet18", widths="wide"), "widths must be"),
    (dict(family="resnet18", resolution=8), "resolution must be"),
])
def test_bad_requests_are_one_sentence(bad, message):
    with pytest.raises(zoo.ProgramZooError, match=message.replace("(", r"\(").replace(")", r"\)")):
        zoo.zoo_program(**bad)


def test_random_program_draws_resolutions_with_224_most_often():
    rng = np.random.default_rng(0)
    res = [zoo.random_program("mobilenet_v2", rng)["input"][2] for _ in range(200)]
    counts = {r: res.count(r) for r in zoo.RESOLUTIONS}
    assert set(res) == set(zoo.RESOLUTIONS) and max(counts, key=counts.get) == 224
    assert zoo.random_program("resnet18", 1, resolution=160)["input"] == [1, 3, 160, 160]


def test_program_plan_is_deterministic_and_disjoint():
    plan = zoo.program_plan(24, 12, 10, seed=3)
    assert plan == zoo.program_plan(24, 12, 10, seed=3)
    other = zoo.program_plan(24, 12, 10, seed=4)
    assert [program_id(s) for s, _ in plan] != [program_id(s) for s, _ in other]
    by_sample = {sample: [spec for spec, s in plan if s == sample] for sample in zoo.SAMPLES}
    assert [len(by_sample[s]) for s in zoo.SAMPLES] == [24, 12, 10]
    ids = [program_id(spec) for spec, _ in plan]
    assert len(set(ids)) == len(ids)  # no program twice, so train and holdout share none
    assert {s["family"] for s in by_sample["train"] + by_sample["holdout"]} == set(zoo.TRAIN_FAMILIES)
    assert {s["family"] for s in by_sample["unseen"]} == set(zoo.UNSEEN_FAMILIES)
    assert {f"{f}-224-full" for f in zoo.TRAIN_FAMILIES} <= {s["name"] for s in by_sample["train"]}
    for spec, _ in plan:
        assert validate(spec) == spec
    # interleaved: the first quarter of the plan already holds each sample
    assert {s for _, s in plan[: len(plan) // 4]} == set(zoo.SAMPLES)


def test_program_plan_stays_phone_sized():
    plan = zoo.program_plan(60, 20, 20, seed=0)
    macs = np.array([sum(layer.macs for _, layer in conv_layers(spec)) for spec, _ in plan])
    biggest = sum(layer.macs for _, layer in conv_layers(zoo.zoo_program("resnet50")))
    assert macs.max() <= biggest
    assert np.median(macs) < 0.25 * biggest  # biased toward pruned widths


def test_program_plan_rejects_bad_counts():
    with pytest.raises(zoo.ProgramZooError, match="n_holdout must be a non-negative integer"):
        zoo.program_plan(1, -1, 0)
    assert zoo.program_plan(0, 0, 0) == []


def test_a_larger_plan_keeps_every_held_out_program_out_of_training():
    small = zoo.program_plan(6, 4, 4, seed=3)
    large = zoo.program_plan(12, 6, 6, seed=3)
    ids = lambda plan, sample: [program_id(s) for s, k in plan if k == sample]  # noqa: E731
    for sample in ("holdout", "unseen", "train"):
        assert ids(large, sample)[:len(ids(small, sample))] == ids(small, sample)
    assert not set(ids(large, "train")) & set(ids(small, "holdout"))


def test_plan_resolutions_bound_every_input():
    plan = zoo.program_plan(5, 3, 3, seed=1, resolutions=(32, 48))
    assert {spec["input"][2] for spec, _ in plan} <= {32, 48}
    with pytest.raises(zoo.ProgramZooError, match="resolutions"):
        zoo.program_plan(1, 1, 1, resolutions=(8,))
