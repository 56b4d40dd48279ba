"""Sampling plans (seeded, de-duplicated, held-out set disjoint), network layer data, acquisition plug-ins."""
import sys
import textwrap
from collections import Counter

import pytest

from jcw.profiler import acquisition, networks, plans
from jcw.profiler.layerspec import LayerSpec


def keys(specs):
    return [s.key() for s in specs]


def test_same_seed_same_plan_other_seed_other_plan():
    a, b, c = plans.make_plan(120, seed=3), plans.make_plan(120, seed=3), plans.make_plan(120, seed=4)
    assert keys(a.training) == keys(b.training) and keys(a.holdout) == keys(b.holdout)
    assert keys(a.unseen) == keys(b.unseen) and keys(a.unseen) != keys(c.unseen)
    assert len(set(keys(a.training)) & set(keys(c.training))) < 10


def test_plan_sizes_mix_and_no_duplicates():
    plan = plans.make_plan(200, seed=0)
    assert (len(plan.prior), len(plan.coverage), len(plan.random)) == (120, 50, 30)
    assert len(plan.holdout) == len(plan.unseen) == plans.holdout_size(200) == 50
    assert len(plans.make_plan(1000, seed=0).holdout) == 200
    assert len(plans.make_plan(100, seed=0, holdout=10, unseen=70).unseen) == 70
    every = keys(plan.training) + keys(plan.holdout) + keys(plan.unseen)
    assert len(every) == len(set(every))


def test_holdout_is_disjoint_from_training_at_every_budget():
    for budget in (50, 400, 1500):
        plan = plans.make_plan(budget, seed=1)
        assert not set(keys(plan.training)) & set(keys(plan.holdout))
        # and from the training layers of any larger budget (so extending never leaks)
        bigger = plans.make_plan(budget * 2, seed=1)
        assert not set(keys(bigger.training)) & set(keys(plan.holdout))


def test_larger_budget_extends_the_plan():
    small, large = plans.make_plan(100, seed=2), plans.make_plan(300, seed=2)
    assert set(keys(small.training)) <= set(keys(large.training))
    assert keys(small.holdout) == keys(large.holdout)[:len(small.holdout)]
    assert keys(small.unseen) == keys(large.unseen)[:len(small.unseen)]


def test_configurations_measure_convs_both_ways_and_dwconv_dense_only():
    plan = plans.make_plan(150, seed=0)
    configs = plan.configurations(threads=2)
    by_layer = Counter(spec.key() for spec, _, _, _ in configs)
    for spec, impl, threads, sample in configs:
        assert threads == 2 and sample in ("prior", "coverage", "random", "holdout", "unseen")
        assert by_layer[spec.key()] == (1 if spec.op == "dwconv" else 2)
        assert not (spec.op == "dwconv" and impl == "sparse")
    assert {s for *_, s in configs} == {"prior", "coverage", "random", "holdout", "unseen"}


def test_densities_cover_dense_and_very_sparse():
    plan = plans.make_plan(400, seed=0)
    densities = Counter(s.density for s in plan.training)
    assert 1.0 in densities and 0.05 in densities and set(densities) <= set(plans.DENSITIES)
    assert max(s.macs for s in plan.random) <= plans.DEFAULT_SPACE.max_macs


def test_prior_layers_are_perturbed_real_layers_at_deployed_input_sizes():
    real = networks.real_layers()
    canonical = {(layer["op"], layer["k"], layer["stride"], layer["h"]) for layer in real}
    deployed = {(layer["op"], layer["k"], layer["stride"], networks.at_resolution(layer, size)["h"])
                for layer in real for size in plans.DEPLOY_RESOLUTIONS}
    plan = plans.make_plan(300, seed=5)
    assert all((s.op, s.k, s.stride, s.h) in canonical for s in plan.holdout)  # the in-family judge stays at 224
    assert all((s.op, s.k, s.stride, s.h) in canonical | deployed for s in plan.prior)
    off_canonical = sum((s.op, s.k, s.stride, s.h) not in canonical for s in plan.prior) / len(plan.prior)
    assert 0.25 <= off_canonical <= 1 - plans.CANONICAL_SHARE + 0.1
    widths = {(layer["op"], layer["k"], layer["stride"], layer["h"]): layer for layer in real}
    fc = [s for s in plan.prior if s.h == 1]
    assert fc and all(s.cout == networks.NUM_CLASSES for s in fc)  # the classifier's outputs stay fixed
    stems = [s for s in plan.prior if s.op == "conv" and s.k == 7]
    assert all(s.cin == 3 for s in stems) and {s.h for s in stems} - {224}  # the input stays 3 channels at any size
    assert any(s.cin < widths[(s.op, s.k, s.stride, s.h)]["cin"] for s in plan.prior
               if (s.op, s.k, s.stride, s.h) in widths and s.h not in (1, 224))


def test_a_layer_at_another_input_size_rounds_each_halving_up():
    layers = {layer["name"]: layer for layer in networks.network_layers("resnet18")}
    assert all(networks.at_resolution(layer, 224) == layer for layer in layers.values())
    maps = sorted({networks.at_resolution(layer, 100)["h"] for layer in layers.values()}, reverse=True)
    assert maps == [100, 25, 13, 7, 4, 1]  # stem 100 -> 50 -> pool 25 -> 13 -> 7 -> 4; the classifier stays 1


def test_network_data_matches_known_architectures():
    assert networks.generate() == {n: networks.network_layers(n) for n in networks.NETWORKS}
    macs = {n: sum(networks.to_spec(layer).macs for layer in networks.network_layers(n)) for n in networks.NETWORKS}
    # published multiply-accumulate counts at 224x224: 1.8G, 4.1G, 569M, 300M
    assert macs["resnet18"] == pytest.approx(1.814e9, rel=0.01)
    assert macs["resnet50"] == pytest.approx(4.09e9, rel=0.01)
    assert macs["mobilenet_v1"] == pytest.approx(569e6, rel=0.01)
    assert macs["mobilenet_v2"] == pytest.approx(300e6, rel=0.01)
    counts = {n: Counter(layer["op"] for layer in networks.network_layers(n)) for n in networks.NETWORKS}
    assert counts["resnet18"]["conv"] == 21 and counts["mobilenet_v1"]["dwconv"] == 13
    assert counts["mobilenet_v2"]["dwconv"] == 17
    with pytest.raises(ValueError, match="network must be one of"):
        networks.network_layers("vgg16")


def test_candidate_pool_excludes_known_layers():
    plan = plans.make_plan(100, seed=0)
    known = set(keys(plan.training)) | set(keys(plan.holdout))
    pool = plans.candidate_pool(11, 200, known)
    assert len(pool) == 200 and not set(keys(pool)) & known and len(set(keys(pool))) == 200


def test_bad_plan_parameters():
    with pytest.raises(ValueError, match="budget must be a positive integer, got 0"):
        plans.make_plan(0)
    with pytest.raises(ValueError, match="prior_share must be in"):
        plans.make_plan(10, prior_share=1.5)
    with pytest.raises(ValueError, match="coverage_share must be in"):
        plans.make_plan(10, prior_share=0.8, coverage_share=0.3)


# ---- acquisition plug-ins through real entry points --------------------------------------------
def install_plugin(tmp_path, monkeypatch, body, name="default"):
    """A real installed distribution on sys.path: a module plus a dist-info declaring the entry point."""
    (tmp_path / "fake_acq.py").write_text(textwrap.dedent(body))
    info = tmp_path / "fake_acq-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-acq\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{acquisition.ENTRY_POINT_GROUP}]\n{name} = fake_acq:choose\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("fake_acq", None)


def test_missing_plugin_is_one_sentence(monkeypatch):
    monkeypatch.setattr(acquisition.metadata, "entry_points", lambda group: [])
    with pytest.raises(acquisition.AcquisitionError, match="needs an acquisition plug-in registered as 'default'"):
        acquisition.load_chooser()


def test_plugin_loaded_from_entry_point_and_held_to_contract(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, """
        def choose(candidates, measured, n, seed):
            # the largest layers first, repeated once to check de-duplication
            order = sorted(range(len(candidates)), key=lambda i: -candidates[i]["cin"] * candidates[i]["cout"])
            return order[:n] + order[:1]
    """)
    chooser = acquisition.load_chooser()
    candidates = [{**LayerSpec(op="conv", cin=c, cout=c, k=1, h=7, w=7).to_dict(), "impl": "dense", "threads": 1}
                  for c in (4, 64, 16, 32)]
    assert acquisition.choose(chooser, candidates, [], 2, 0) == [1, 3]
    with pytest.raises(acquisition.AcquisitionError, match="returned index 5, outside 0..3"):
        acquisition.choose(lambda c, m, n, s: [5], candidates, [], 1, 0)
    with pytest.raises(acquisition.AcquisitionError, match="must return a list of candidate indices"):
        acquisition.choose(lambda c, m, n, s: ["x"], candidates, [], 1, 0)


def test_broken_plugin_is_one_sentence(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "raise ImportError('no sklearn here')\n")
    with pytest.raises(acquisition.AcquisitionError, match="could not be loaded .no sklearn here"):
        acquisition.load_chooser()
