"""Profile store: plan and rounds round trip, resume after reopening, aggregation, drift, CSV."""
import csv
import sqlite3

import pytest

from jcw.profiler.layerspec import LayerSpec
from jcw.profiler.store import ProfileStore, StoreError, config_id

A = LayerSpec(op="conv", cin=8, cout=16, k=3, h=14, w=14, density=0.5)
B = LayerSpec(op="dwconv", cin=8, cout=8, k=3, h=14, w=14)


def result(us_min, us_median=None, **extra):
    us_median = us_min * 1.05 if us_median is None else us_median
    return {"us_min": us_min, "us_median": us_median, "us_mean": us_median, "us_std": 1.0, "reps": 10,
            "max_abs_err": 1e-6, "timed_us": 10 * us_median, **extra}


def make_store(path):
    store = ProfileStore(path, create=True)
    added = store.add_plan([(A, "dense", 1, "prior"), (A, "sparse", 1, "prior"), (B, "dense", 1, "random")])
    assert added == 3
    return store


def test_plan_is_deduplicated_and_ordered(tmp_path):
    with make_store(tmp_path / "p") as store:
        assert store.add_plan([(A, "dense", 1, "random"), (B, "dense", 2, "holdout")]) == 1
        plan = store.plan()
        assert [r["config_id"] for r in plan] == [config_id(A, "dense", 1), config_id(A, "sparse", 1),
                                                   config_id(B, "dense", 1), config_id(B, "dense", 2)]
        assert plan[0]["sample"] == "prior"  # a known configuration keeps its first sample tag
        assert [r["config_id"] for r in store.plan("holdout")] == [config_id(B, "dense", 2)]
        assert LayerSpec.from_dict(plan[0]) == A


def test_results_survive_reopening_and_pending_resumes(tmp_path):
    path = tmp_path / "p"
    with make_store(path) as store:
        store.record(config_id(A, "dense", 1), 0, result(100.0), batch=0)
        store.record(config_id(B, "dense", 1), 0, {"id": "x", "error": "boom"}, batch=0)
        store.set_meta("device_facts", {"cpu": "test", "cores": [1, 2]})
    with ProfileStore(path) as store:  # a new process would see exactly this
        assert [r["config_id"] for r in store.pending(0)] == [config_id(A, "sparse", 1)]
        assert len(store.pending(1)) == 3
        assert store.get_meta("device_facts") == {"cpu": "test", "cores": [1, 2]}
        assert store.get_meta("absent", "fallback") == "fallback"
        assert [e["error"] for e in store.errors()] == ["boom"]
        assert store.next_batch_number() == 1
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_measurements_aggregate_rounds_and_skip_drift(tmp_path):
    with make_store(tmp_path / "p") as store:
        cid = config_id(A, "dense", 1)
        store.record(cid, 0, result(100.0, 130.0), batch=0)
        store.record(cid, 1, result(110.0, 112.0), batch=1)
        store.record(cid, 2, result(60.0, 61.0), batch=2)
        store.flag_drift(2, deviation=0.4)
        row = {r["config_id"]: r for r in store.measurements()}[cid]
        assert row["latency_us"] == 100.0          # fastest clean round of us_min; the drifted 60 is ignored
        assert row["rounds"] == 2 and row["round_latencies"] == [100.0, 110.0, 60.0]
        assert row["spread"] == pytest.approx(10.0 / 105.0)
        assert row["drift"] is False
        median = {r["config_id"]: r for r in store.measurements(statistic="us_median", aggregate="median")}[cid]
        assert median["latency_us"] == pytest.approx(121.0)
        assert store.drift_batches()[0]["batch"] == 2 and store.drift_batches()[0]["deviation"] == 0.4
        # a re-measurement replaces the drifted row, but the batch stays on record as flagged
        store.record(cid, 2, result(105.0), batch=3)
        assert {r["config_id"]: r for r in store.measurements()}[cid]["rounds"] == 3
        assert len(store.drift_batches()) == 1
        with pytest.raises(ValueError, match="statistic must be"):
            store.measurements(statistic="us_max")
        with pytest.raises(ValueError, match="aggregate must be"):
            store.measurements(aggregate="mean")


def test_measurement_rows_keep_the_predictor_contract(tmp_path):
    with make_store(tmp_path / "p") as store:
        store.record(config_id(B, "dense", 1), 0, result(50.0), batch=0)
        store.record(config_id(A, "sparse", 1), 0, {"error": "x"}, batch=0)
        rows = store.measurements(sample="random")
        assert len(rows) == 1 and store.measurements(sample="prior") == []
        expected = {"config_id", "op", "cin", "cout", "k", "stride", "pad", "h", "w", "density", "impl", "threads",
                    "sample", "latency_us", "rounds", "spread", "round_latencies", "drift"}
        assert set(rows[0]) == expected


def test_fingerprint_tracks_the_data(tmp_path):
    with make_store(tmp_path / "p") as store:
        store.record(config_id(A, "dense", 1), 0, result(100.0), batch=0)
        first = store.fingerprint()
        assert first == store.fingerprint()
        store.record(config_id(A, "dense", 1), 0, result(101.0), batch=0)
        assert store.fingerprint() != first


def test_csv_export(tmp_path):
    with make_store(tmp_path / "p") as store:
        store.record(config_id(A, "dense", 1), 0, result(100.0), batch=0)
        store.record(config_id(A, "dense", 1), 1, result(90.0), batch=1)
        store.record(config_id(B, "dense", 1), 0, {"error": "bad"}, batch=1)
        assert store.export_csv(tmp_path / "out.csv") == 3
    with open(tmp_path / "out.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["round"] for r in rows] == ["0", "1", "0"]
    assert rows[1]["us_min"] == "90.0" and rows[2]["error"] == "bad" and rows[0]["op"] == "conv"


def test_bad_profile_directories_are_one_sentence(tmp_path):
    with pytest.raises(StoreError, match="no profile at .*run `jcw profile` first"):
        ProfileStore(tmp_path / "nothing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "profile.sqlite").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a readable profile database"):
        ProfileStore(tmp_path / "junk")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot create profile directory"):
        ProfileStore(tmp_path / "file" / "sub", create=True)
    with make_store(tmp_path / "old"):
        pass
    db = sqlite3.connect(tmp_path / "old" / "profile.sqlite")
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 99"):
        ProfileStore(tmp_path / "old")
