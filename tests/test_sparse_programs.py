"""Programs of the sparse runtime in the profile: their plan (engine families, densities drawn like the search's
genome, seeded streams apart from the ExecuTorch plan), the runtime as part of a program's identity in the store
(one spec measured under both runtimes stays two programs; profiles from before the runtime column keep their
ids), and the sentence for a device whose runner has no engine."""
import json
import sqlite3

import pytest

from jcw.profiler import program_zoo, programs, sparse_programs
from jcw.profiler.engine_plan import runs_sparse
from jcw.profiler.store import ProfileStore


def _densities(spec):
    return {n["name"]: n["density"] for n in spec["nodes"] if n["op"] == "conv" and n["groups"] == 1}


def test_sparse_plan_draws_engine_families_at_genome_densities_within_the_search_bounds():
    plan = sparse_programs.sparse_plan(24, 10, seed=3, resolutions=[96, 128])
    assert [s for _, s in plan].count("train") == 24 and [s for _, s in plan].count("holdout") == 10
    assert {spec["family"] for spec, _ in plan} == set(sparse_programs.ENGINE_FAMILIES)
    assert {spec["input"][-1] for spec, _ in plan} <= {96, 128}
    ids = [programs.program_id(spec) for spec, _ in plan]
    assert len(set(ids)) == len(ids)  # no program is both trained on and held out
    sparse_counts = []
    for spec, _ in plan:
        for node in spec["nodes"]:
            if node["op"] != "conv" or node["groups"] != 1:
                assert node.get("density", 1.0) == 1.0  # depthwise and linear layers run dense on the engine
                continue
            assert node["density"] in sparse_programs.DENSITY_STEPS
            if node["inputs"] == ["input"]:
                assert node["density"] >= sparse_programs.FIRST_DENSITY
            if node["stride"] > 1:
                assert node["density"] >= sparse_programs.STRIDED_DENSITY
        sparse_counts.append(sum(bool(runs_sparse(n)) for n in spec["nodes"]))
    # A mix of networks run mostly sparse and mostly dense, so both kinds of segment and their boundaries are seen.
    assert min(sparse_counts) < max(sparse_counts) and max(sparse_counts) > 0
    assert plan == sparse_programs.sparse_plan(24, 10, seed=3, resolutions=[96, 128])  # deterministic


def test_more_sparse_programs_extend_each_sample_and_never_touch_the_executorch_plan():
    small = sparse_programs.sparse_plan(8, 10, seed=1, resolutions=[96])
    large = sparse_programs.sparse_plan(20, 10, seed=1, resolutions=[96])
    by_sample = {s: [programs.program_id(p) for p, sample in small if sample == s] for s in ("train", "holdout")}
    larger = {s: [programs.program_id(p) for p, sample in large if sample == s] for s in ("train", "holdout")}
    assert larger["holdout"] == by_sample["holdout"] and larger["train"][:8] == by_sample["train"]
    executorch = program_zoo.program_plan(4, 10, 10, seed=1, resolutions=[96])
    # the sparse streams are their own: drawing sparse programs first changes nothing of the executorch plan
    sparse_programs.sparse_plan(30, 10, seed=1, resolutions=[96])
    assert program_zoo.program_plan(4, 10, 10, seed=1, resolutions=[96]) == executorch


def test_a_layer_too_small_to_prune_keeps_at_least_one_weight():
    spec = programs.validate({"name": "t", "input": [1, 2, 8, 8], "nodes": [
        {"name": "c1", "op": "conv", "cout": 2, "k": 1}, {"name": "c2", "op": "conv", "cout": 1, "k": 1},
        {"name": "g", "op": "gap"}, {"name": "f", "op": "flatten"}, {"name": "fc", "op": "linear", "cout": 3}]})
    low, high = sparse_programs.density_range(spec)["c2"]  # 2 weights: 0.1 and 0.2 would prune both away
    assert sparse_programs.DENSITY_STEPS[low] >= 0.3 and high == len(sparse_programs.DENSITY_STEPS) - 1
    for seed in range(20):
        assert sparse_programs.random_densities(spec, seed)["c2"] >= 0.3


def test_one_spec_measured_on_both_runtimes_is_two_programs_and_results_never_mix(tmp_path):
    spec = program_zoo.zoo_program("mobilenet_v1", 0.25, 64)
    with ProfileStore(tmp_path / "p", create=True) as store:
        assert store.add_programs([(spec, "train", 1)]) == 1
        assert store.add_programs([(spec, "train", 1)], runtime="sparse") == 1
        assert store.add_programs([(spec, "train", 1)], runtime="sparse") == 0  # known: kept as it is
        rows = store.programs()
        assert [r["runtime"] for r in rows] == ["executorch", "sparse"]
        by_runtime = {r["runtime"]: r["program_id"] for r in rows}
        assert by_runtime["executorch"] == programs.program_id(spec, 1)  # ids of the executorch runtime unchanged
        assert by_runtime["sparse"] == programs.program_id(spec, 1, "sparse") != by_runtime["executorch"]
        for runtime, us in (("executorch", 1000.0), ("sparse", 3000.0)):
            for round_index in range(2):
                store.record_program(by_runtime[runtime], round_index, {"us_min": us + round_index}, 0)
        measured = {r["runtime"]: r["latency_us"] for r in store.program_measurements()}
        assert measured == {"executorch": 1000.0, "sparse": 3000.0}
        assert [r["runtime"] for r in store.program_measurements(runtime="sparse")] == ["sparse"]
        assert [r["runtime"] for r in store.programs(runtime="executorch")] == ["executorch"]
        assert {r["program_id"] for r in store.pending_programs(2)} == set(by_runtime.values())
        with pytest.raises(ValueError, match="runtime must be one of executorch, sparse"):
            store.add_programs([(spec, "train", 1)], runtime="tflite")


def _old_profile(directory, spec):
    """A profile database as jcw wrote it before the sparse runtime: no `runtime` column."""
    with ProfileStore(directory, create=True) as store:
        store.add_programs([(spec, "train", 1)])
        program_id = store.programs()[0]["program_id"]
        store.record_program(program_id, 0, {"us_min": 500.0}, 0)
        fingerprint = store.fingerprint()
    db = sqlite3.connect(directory / "profile.sqlite")
    with db:
        db.execute("ALTER TABLE program DROP COLUMN runtime")
    db.close()
    return program_id, fingerprint


@pytest.mark.parametrize("readonly", [False, True])
def test_a_profile_from_before_the_runtime_column_keeps_its_programs_and_ids(tmp_path, readonly):
    spec = program_zoo.zoo_program("resnet18", 0.25, 64)
    program_id, fingerprint = _old_profile(tmp_path / "p", spec)
    with ProfileStore(tmp_path / "p", readonly=readonly) as store:
        rows = store.program_measurements()
        assert [(r["program_id"], r["runtime"], r["latency_us"]) for r in rows] == [(program_id, "executorch", 500.0)]
        assert store.fingerprint() == fingerprint  # a predictor trained on it still names the same data
        if not readonly:  # the column was added in place, with the old rows' runtime
            assert store.add_programs([(spec, "holdout", 1)], runtime="sparse") == 1
            assert [r["runtime"] for r in store.programs()] == ["executorch", "sparse"]


def test_a_runner_without_the_engine_skips_sparse_programs_in_one_sentence():
    old = {"name": "ptebench", "version": "0.1.9", "executorch": "1.0"}
    new = {**old, "version": "0.2.0", "net_format_version": 1}
    assert sparse_programs.runtimes_to_measure("usb:X", new, 40, 16) == (("executorch", "sparse"), None)
    assert sparse_programs.runtimes_to_measure("usb:X", new, 0, 16) == (("sparse",), None)
    runtimes, note = sparse_programs.runtimes_to_measure("usb:X", old, 40, 16)
    assert runtimes == ("executorch",) and "usb:X" in note and "no sparse network engine" in note
    assert len(note.splitlines()) == 1 and note.count(". ") == 0
    assert sparse_programs.runtimes_to_measure("usb:X", old, 40, 0) == (("executorch",), None)
    assert sparse_programs.runtimes_to_measure("usb:X", None, 40, 16) == ((), None)  # the caller says why


def test_sparse_counts_hold_out_a_third_and_at_least_ten():
    assert sparse_programs.sparse_counts(0) == (0, 0)
    assert sparse_programs.sparse_counts(16) == (16, 10)
    assert sparse_programs.sparse_counts(60) == (60, 20)
    assert json.dumps(sparse_programs.sparse_plan(0, 0)) == "[]"
    with pytest.raises(program_zoo.ProgramZooError, match="n_train"):
        sparse_programs.sparse_plan(-1, 0)
