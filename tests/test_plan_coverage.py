"""The training plan covers the layer kinds users bring, and the unseen-architecture held-out set stays unseen:
no shape of it in training or in the real-network holdout, its families disjoint from the plan's."""
import math
import random
from pathlib import Path

import pytest

from jcw.profiler import networks, plans, program_zoo, session, unseen_layers
from jcw.profiler.layerspec import LayerSpec


@pytest.fixture(scope="module")
def default_plan():
    return plans.make_plan(plans.DEFAULT_BUDGET, seed=0)


def test_channel_counts_off_multiples_of_8_and_16_and_on_them(default_plan):
    coverage = default_plan.coverage
    assert sum(s.cin % 8 != 0 for s in coverage) >= len(coverage) // 5
    assert sum(s.cin % 8 == 0 and s.cin % 16 != 0 for s in coverage) >= 10  # multiples of 8, not of 16
    assert sum(s.cin % 16 == 0 for s in coverage) >= 10
    depthwise = [s for s in default_plan.training if s.op == "dwconv"]
    assert sum(s.cin % 8 != 0 for s in depthwise) >= len(depthwise) // 5


@pytest.mark.parametrize("k", [3, 5])
def test_depthwise_at_every_resolution_from_3_to_112(default_plan, k):
    sizes = {s.h for s in default_plan.training if s.op == "dwconv" and s.k == k}
    edges = [round(7 * 2 ** (i / 3)) for i in range(13)]  # 7 ... 112 in steps of 2^(1/3)
    assert edges[0] == 7 and edges[-1] == 112
    for low, high in zip(edges, edges[1:]):
        assert any(low <= h < high for h in sizes), f"no {k}x{k} depthwise layer at {low}..{high - 1}"
    assert min(sizes) <= 4 and max(sizes) >= 112  # a network fed 96 px ends on 3 px maps
    strides = {s.stride for s in default_plan.coverage if s.op == "dwconv" and s.k == k}
    assert strides == {1, 2}


def test_stems_at_96_to_320_px(default_plan):
    stems = [s for s in default_plan.training if s.op == "conv" and s.cin == 3 and s.h >= 96]
    for low in range(96, 320, 32):
        assert any(low <= s.h < low + 32 for s in stems), f"no stem at {low}..{low + 31} px"
    assert {s.k for s in stems} >= {3, 5, 7} and {s.stride for s in stems} == {1, 2}


def test_wide_expansions_and_projections_at_small_resolutions(default_plan):
    wide = [s for s in default_plan.coverage if s.op == "conv" and s.k == 1 and s.h <= 14
            and max(s.cin, s.cout) >= 1000 and max(s.cin, s.cout) >= 3 * min(s.cin, s.cout)]
    assert any(s.cout > s.cin for s in wide) and any(s.cin > s.cout for s in wide)
    assert max(max(s.cin, s.cout) for s in wide) >= 1800


def test_fully_connected_layers_from_squeeze_excitation_to_a_vgg_flatten(default_plan):
    fc = [s for s in default_plan.coverage if s.op == "conv" and s.k == 1 and s.h == s.w == 1]
    assert len(fc) >= 20
    assert min(s.cin for s in fc) < 128 and max(s.cin for s in fc) > 8000, "SE squeezes to classifier inputs"
    assert min(s.cout for s in fc) < 64 and max(s.cout for s in fc) > 1000
    assert any(s.cin % 8 for s in fc) and {s.density for s in fc} > {1.0}
    # classifiers whose weights outgrow a last-level cache: the latency per weight changes there
    assert sum(1_000_000 <= s.cin * s.cout <= 20_000_000 for s in fc) >= 6


def test_training_cost_stays_that_of_the_earlier_plan(default_plan):
    """Plan version 1 measured 2830 training configurations at the default budget (benchmarks/RESULTS.md)."""
    training = sum(len(plans.layer_impls(s)) for s in default_plan.training)
    assert len(default_plan.training) == plans.DEFAULT_BUDGET
    assert abs(training / 2830 - 1) <= 0.05


def test_unseen_families_are_not_plan_families_and_match_the_program_zoo():
    assert len(unseen_layers.FAMILIES) >= 4
    assert set(program_zoo.UNSEEN_FAMILIES) <= set(unseen_layers.FAMILIES)
    assert not set(unseen_layers.FAMILIES) & set(program_zoo.TRAIN_FAMILIES)
    # a zoo family's layers are the convolutions of its program, so layer and program level agree
    layers = unseen_layers.family_layers("efficientnet_lite0", random.Random(0), resolution=224)
    assert sum(s.op == "dwconv" and s.k == 5 for s in layers) == 9
    assert layers[0] == LayerSpec(op="conv", cin=3, cout=layers[0].cout, k=3, h=224, w=224, stride=2)


@pytest.mark.parametrize("build, width, macs", [("_shufflenet_v2", 1.0, 146e6), ("_ghostnet", 1.0, 141e6),
                                                ("_mobilenet_v3_large", 1.0, 219e6)])
def test_layer_only_families_have_their_published_size(build, width, macs):
    """Multiply-accumulates at 224 px as published (GhostNet's without its squeeze-excitation, ~1% of it)."""
    layers = getattr(unseen_layers, build)(width, 224)
    assert sum(s.macs for s in layers) == pytest.approx(macs, rel=0.03)


@pytest.mark.parametrize("budget, seed", [(200, 0), (1600, 0), (400, 3)])
def test_no_unseen_shape_in_training_or_in_the_real_network_holdout(budget, seed):
    plan = plans.make_plan(budget, seed)
    kept_out = plans.unseen_shapes(seed)
    assert plan.unseen and {plans.shape_key(s) for s in plan.unseen} <= kept_out
    for sample in ("prior", "coverage", "random", "holdout"):
        assert not {plans.shape_key(s) for s in getattr(plan, sample)} & kept_out, sample
    pool = plans.candidate_pool(seed * 1000 + 7, 300, set(), plan_seed=seed)
    assert not {plans.shape_key(s) for s in pool} & kept_out


def test_unseen_set_draws_every_family_in_turn():
    bank, _ = plans.unseen_bank(0)
    family_of = {plans.shape_key(s): family for family, layers in bank for s in layers}
    unseen = plans.make_plan(100, 0, holdout=0, unseen=70).unseen
    families = [family_of[plans.shape_key(s)] for s in unseen]
    assert set(families) == set(unseen_layers.FAMILIES)
    assert max(families.count(f) for f in set(families)) <= math.ceil(70 / len(unseen_layers.FAMILIES)) + 1
    assert {s.op for s in unseen} == {"conv", "dwconv"} and len({s.density for s in unseen}) > 3


def test_a_profile_of_an_earlier_plan_version_is_not_extended():
    stored = {"budget": 1600, "seed": 0, "threads": 1, "rounds": 5, "adaptive": False, "holdout": 320}
    earlier = f"earlier jcw .layer plan version 1, this one plans version {plans.PLAN_VERSION}"
    with pytest.raises(session.ProfileParamsError, match=earlier):
        session.ProfileParams(budget=1600).merge(stored, Path("p"))
    current = {**stored, "unseen": 320, "plan_version": plans.PLAN_VERSION}
    assert session.ProfileParams(budget=1600).merge(current, Path("p")).unseen == 320
    with pytest.raises(session.ProfileParamsError, match="--unseen 320 and a rerun may raise it but not lower it"):
        session.ProfileParams(budget=1600, unseen=10).merge(current, Path("p"))


def test_a_transfer_profile_extends_across_plan_versions_whose_transfer_plan_is_the_same():
    stored = {"budget": 100, "seed": 0, "threads": 1, "rounds": 2, "adaptive": False, "holdout": 10, "unseen": 0,
              "transfer": True, "plan_version": plans.TRANSFER_PLAN_SINCE}
    params = session.ProfileParams(budget=200, rounds=2, holdout=10, unseen=0, transfer=True)
    assert params.merge(stored, Path("p")).budget == 200
    with pytest.raises(session.ProfileParamsError, match="earlier jcw"):
        params.merge({**stored, "plan_version": plans.TRANSFER_PLAN_SINCE - 1}, Path("p"))
    with pytest.raises(session.ProfileParamsError, match="earlier jcw"):  # a default plan of version 3 differs
        session.ProfileParams(budget=200, rounds=2, holdout=10, unseen=0).merge(
            {**stored, "transfer": False}, Path("p"))
    # What the versions since draw for a transfer profile: real-network layers at 224 px, the same held-out sets.
    plan = plans.transfer_plan(60, holdout=10, unseen=5)
    real = {(layer["op"], layer["k"], layer["stride"], layer["h"]) for layer in networks.real_layers()}
    assert all((s.op, s.k, s.stride, s.h) in real for s in plan.prior)
