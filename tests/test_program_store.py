"""Profile store, whole programs: plan and rounds round trip, resume after reopening, the aggregate the
predictor trains on, errors, fingerprint, and a profile written by the store before programs existed."""
import importlib.util
import sqlite3
import subprocess
from pathlib import Path

import pytest

from jcw.profiler import programs
from jcw.profiler.layerspec import LayerSpec
from jcw.profiler.store import ROUND_STATISTIC, ProfileStore, config_id

ROOT = Path(__file__).resolve().parent.parent
LAYER = LayerSpec(op="conv", cin=8, cout=16, k=3, h=14, w=14)


def tiny(name, cout=8, family="tiny"):
    return {"name": name, "family": family, "input": [1, 3, 16, 16],
            "nodes": [{"name": "c1", "op": "conv", "cout": cout, "k": 3, "act": "relu"},
                      {"name": "pool", "op": "gap"}, {"name": "flat", "op": "flatten"},
                      {"name": "fc", "op": "linear", "cout": 10}]}


A, B, C = tiny("a", 8), tiny("b", 12), tiny("c", 16, family="other")


def result(us_min, us_median=None, **extra):
    us_median = us_min * 1.05 if us_median is None else us_median
    return {"id": "g0", "runtime": "executorch", "threads": 2, "us_min": us_min, "us_median": us_median,
            "us_mean": us_median, "us_std": 1.0, "reps": 10, "timed_us": 10 * us_median, **extra}


def pid(spec, threads=2):
    return programs.program_id(programs.validate(spec), threads)


def make_store(path):
    store = ProfileStore(path, create=True)
    assert store.add_programs([(A, "train", 2), (B, "holdout", 2), (C, "unseen", 2)]) == 3
    return store


def test_programs_round_trip_in_plan_order(tmp_path):
    with make_store(tmp_path / "p") as store:
        assert store.add_programs([(A, "holdout", 2), (A, "train", 4)]) == 1  # same spec at 4 threads is new
        rows = store.programs()
        assert [r["program_id"] for r in rows] == [pid(A), pid(B), pid(C), pid(A, 4)]
        assert rows[0]["sample"] == "train"  # a known program keeps its first sample tag
        assert rows[0]["spec"] == programs.validate(A) and rows[0]["name"] == "a" and rows[0]["family"] == "tiny"
        assert rows[0]["partitions"] is None and rows[0]["threads"] == 2
        assert [r["program_id"] for r in store.programs("unseen")] == [pid(C)]
        stored_text = store._db.execute("SELECT spec FROM program WHERE program_id = ?", (pid(A),)).fetchone()[0]
        assert stored_text == programs.canonical_json(programs.validate(A))
        store.set_program_export(pid(A), 2, ["aten.mean"])
        assert store.programs()[0]["partitions"] == 2 and store.programs()[0]["undelegated_ops"] == ["aten.mean"]
        with pytest.raises(ValueError, match="program sample must be one of train, holdout, unseen"):
            store.add_programs([(A, "prior", 2)])
        with pytest.raises(programs.ProgramSpecError, match="'op' must be one of"):
            store.add_programs([({**A, "nodes": [{"op": "softmax"}]}, "train", 2)])


def test_program_results_survive_reopening_and_pending_resumes(tmp_path):
    path = tmp_path / "p"
    with make_store(path) as store:
        store.record(config_id(LAYER, "dense", 2), 0, result(5.0), batch=0)  # layer batches share the counter
        store.record_program(pid(A), 0, result(100.0), batch=1)
        store.record_program(pid(B), 0, {"id": "g1", "error": "the program has 2 inputs"}, batch=1)
    with ProfileStore(path) as store:  # a new process would see exactly this
        assert [r["program_id"] for r in store.pending_programs(0)] == [pid(C)]
        assert [r["program_id"] for r in store.pending_programs(1)] == [pid(A), pid(B), pid(C)]
        assert store.pending_programs(0)[0]["spec"] == programs.validate(C)
        errors = store.program_errors()
        assert [(e["program_id"], e["round"], e["error"]) for e in errors] == [(pid(B), 0, "the program has 2 inputs")]
        assert errors[0]["sample"] == "holdout" and store.errors() == []  # layer errors stay layer errors
        assert store.next_batch_number() == 2
        assert len(store.program_rounds()) == 2


def test_program_measurements_take_the_layers_statistic(tmp_path):
    assert ROUND_STATISTIC == "us_min"
    with make_store(tmp_path / "p") as store:
        store.record_program(pid(A), 0, result(100.0, 130.0), batch=0)
        store.record_program(pid(A), 1, result(90.0, 112.0), batch=1)
        store.record_program(pid(A), 2, result(120.0, 121.0), batch=2)
        store.record_program(pid(B), 0, result(50.0), batch=0)
        store.record_program(pid(B), 1, {"error": "crashed"}, batch=1)
        store.record_program(pid(C), 0, {"error": "crashed"}, batch=0)
        rows = {r["program_id"]: r for r in store.program_measurements()}
        assert set(rows) == {pid(A), pid(B)}  # C has no good round
        a = rows[pid(A)]
        assert a["latency_us"] == 90.0 and a["us_median"] == 121.0 and a["rounds"] == 3
        assert a["round_latencies"] == [100.0, 90.0, 120.0] and a["spread"] == pytest.approx(30.0 / 100.0)
        assert a["spec"] == programs.validate(A) and a["sample"] == "train" and a["threads"] == 2
        assert {"program_id", "name", "family", "sample", "threads", "spec", "partitions", "latency_us",
                "us_median", "rounds"} <= set(a)
        assert rows[pid(B)]["rounds"] == 1 and rows[pid(B)]["latency_us"] == 50.0
        assert [r["program_id"] for r in store.program_measurements(sample="holdout")] == [pid(B)]
        assert store.program_measurements(sample="unseen") == []
        # a rerun of a round replaces it, exactly as for layers
        store.record_program(pid(A), 1, result(95.0), batch=3)
        assert {r["program_id"]: r for r in store.program_measurements()}[pid(A)]["latency_us"] == 95.0


def test_fingerprint_covers_programs(tmp_path):
    with make_store(tmp_path / "p") as store:
        store.record(config_id(LAYER, "dense", 2), 0, result(5.0), batch=0)
        layers_only = store.fingerprint()
        store.record_program(pid(A), 0, result(100.0), batch=1)
        with_program = store.fingerprint()
        assert with_program != layers_only and store.fingerprint() == with_program
        store.record_program(pid(A), 0, result(101.0), batch=1)
        assert store.fingerprint() != with_program
        store.record_program(pid(B), 0, {"error": "x"}, batch=2)  # an error is no data
        assert store.fingerprint() == store.fingerprint()


#: The last commit whose profile store had no program tables.
PRE_PROGRAM_COMMIT = "afffdb1"


def _old_store_module(tmp_path):
    """profiler/store.py as committed before programs existed, loaded as its own module."""
    text = subprocess.run(["git", "show", f"{PRE_PROGRAM_COMMIT}:profiler/store.py"], cwd=ROOT, capture_output=True,
                          text=True)
    if text.returncode != 0 or "program" in text.stdout:
        pytest.fail(f"cannot read the pre-program store from git: {text.stderr.strip() or 'HEAD has programs'}")
    path = tmp_path / "old_store.py"
    path.write_text(text.stdout)
    spec = importlib.util.spec_from_file_location("old_store", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_profile_written_before_programs_existed_opens_and_keeps_its_data(tmp_path):
    old = _old_store_module(tmp_path)
    path = tmp_path / "old"
    layers = [LayerSpec(op="conv", cin=8 + i, cout=16, k=3, h=14, w=14) for i in range(10)]
    with old.ProfileStore(path, create=True) as store:
        store.add_plan([(spec, "dense", 1, "prior" if i < 8 else "holdout") for i, spec in enumerate(layers)])
        for i, spec in enumerate(layers):
            store.record(old.config_id(spec, "dense", 1), 0, result(100.0 + i), batch=0)
        store.set_meta("plan_params", {"budget": 8, "seed": 0, "threads": 1, "rounds": 1, "adaptive": False,
                                       "holdout": 2})
        # a layer runner whose series the predictor trains on (older series are refused by policy, not schema)
        store.set_meta("runner", {"name": "convbench", "version": "0.2.0", "xnnpack": "executorch-1.5.1"})
        old_fingerprint = store.fingerprint()
        old_rows = store.measurements()
    tables = {r[0] for r in sqlite3.connect(path / "profile.sqlite").execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "program" not in tables
    with ProfileStore(path) as store:
        assert store.measurements() == old_rows
        assert store.fingerprint() == old_fingerprint  # a predictor trained on it still matches its card
        assert store.programs() == [] and store.program_measurements() == [] and store.program_errors() == []
        assert len(store.pending_programs(0)) == 0
        store.add_programs([(A, "train", 1)])  # and it can grow programs
        assert len(store.pending_programs(0)) == 1
    from jcw.predictor import pipeline
    data = pipeline.read_profile(path)  # what `jcw train` reads
    assert len(data["training"]) == 8 and len(data["holdout"]) == 2 and data["fingerprint"] == old_fingerprint
    assert data["threads"] == 1


def test_a_layer_only_profile_without_program_tables_still_trains(tmp_path, capsys):
    """A real layer profile with the program tables and meta removed, as an older jcw left it."""
    from jcw.__main__ import main
    from jcw.profiler import session

    fast = ["--warmup", "0", "--min-reps", "2", "--min-time-ms", "0", "--check-samples", "4"]
    session.profile("local", tmp_path / "p", budget=12, rounds=1, runner_args=fast)
    db = sqlite3.connect(tmp_path / "p" / "profile.sqlite")
    db.execute("DROP TABLE program_measurement")
    db.execute("DROP TABLE program")
    db.execute("DELETE FROM meta WHERE key IN ('threads', 'runtime', 'program_runner', 'program_params')")
    db.commit()
    db.close()
    status = main(["train", "--profile", str(tmp_path / "p"), "--out", str(tmp_path / "pred")])
    _, err = capsys.readouterr()
    assert status == 0, err
    assert (tmp_path / "pred" / "card.json").is_file()
