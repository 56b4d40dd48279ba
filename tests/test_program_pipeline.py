"""`jcw train` / `jcw predict --programs` end to end on a small profile built with the ProfileStore API:
synthetic layer timings and whole programs timed in rounds under a known law (see test_program_model)."""
import json

import numpy as np
import pytest

from jcw import predictor
from jcw.__main__ import main
from jcw.predictor import PredictorError, efficiency, pipeline
from jcw.predictor.program_eval import BASELINE, LABEL_FLOOR, OURS, SUM_DENSE
from jcw.profiler.layerspec import LayerSpec
from jcw.profiler.store import ProfileStore
from test_program_model import fake_layer_ms, make_specs, synthetic, synthetic_layer_rows

THREADS = 1
RUNNER = {"version": "0.2.0", "xnnpack": "executorch-1.5.1", "cpu": "test"}


def build_profile(directory, with_programs=True, runner=RUNNER, seed=0):
    rng = np.random.default_rng(seed)
    with ProfileStore(directory, create=True) as store:
        store.set_meta("runner", runner)
        store.set_meta("device_facts", {"cpu": "test"})
        store.set_meta("threads", THREADS)
        store.set_meta("runtime", "executorch")
        rows = synthetic_layer_rows(160, seed=seed)
        store.add_plan((LayerSpec.from_dict(r), r["impl"], THREADS, "random") for r in rows)
        configs = {r["config_id"]: r for r in store.plan()}
        for batch, config in enumerate(configs.values()):
            us = 1000 * fake_layer_ms({k: np.array([config[k]]) for k in ("op", "cin", "cout", "k", "stride", "pad",
                                                                              "h", "w")})[0]
            us *= 1.5 if config["impl"] == "sparse" else 1.0
            for round_index in range(2):
                store.record(config["config_id"], round_index, {"us_min": us * (1 + 0.01 * round_index),
                                                                "us_median": us * 1.05}, batch)
        if not with_programs:
            return directory
        train = make_specs(45, seed=seed + 1, families=("res", "mobile", "branch"))
        holdout = make_specs(15, seed=seed + 2, families=("res", "mobile", "branch"))
        unseen = make_specs(10, seed=seed + 3, families=("plain",))
        entries = [(s, "train", THREADS) for s in train] + [(s, "holdout", THREADS) for s in holdout] + \
                  [(s, "unseen", THREADS) for s in unseen]
        store.add_programs(entries)
        _, truth = synthetic([s for s, _, _ in entries])
        stored = {(p["name"]): p for p in store.programs()}
        batch = store.next_batch_number()
        for (spec, _, _), ms in zip(entries, truth):
            program_id = stored[spec["name"]]["program_id"]
            for round_index in range(4):
                us = 1000 * ms * (1 + abs(rng.normal(0, 0.01)))
                store.record_program(program_id, round_index, {"us_min": us, "us_median": us * 1.02, "reps": 5}, batch)
    return directory


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import contextlib
    import io

    base = tmp_path_factory.mktemp("programs")
    profile = build_profile(base / "profile")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["train", "--profile", str(profile), "--out", str(base / "pred"), "--model", "linear"])
    return base, status, printed.getvalue()


def test_train_fits_and_scores_the_program_model(trained):
    base, status, text = trained
    assert status == 0
    assert "whole-program latency on ExecuTorch" in text and "baseline" in text and LABEL_FLOOR in text
    card = json.loads((base / "pred" / "card.json").read_text())
    assert card["runtime"] == "executorch" and card["threads"] == THREADS and card["format_version"] == 3
    assert card["program_model"]["kind"] in ("linear", "corrected")
    assert card["program_model"]["coef"]["conv_ms"] == pytest.approx(1.15, rel=0.1)
    metrics = card["program_metrics"]
    for sample in ("holdout", "unseen"):
        ours, baseline, dense = (metrics[sample][k] for k in (OURS, BASELINE, SUM_DENSE))
        assert ours["within10"] >= 0.9, (sample, ours)
        assert ours["median"] < baseline["median"] and ours["median"] < dense["median"]
        assert metrics[sample][LABEL_FLOOR]["n"] == metrics[sample]["n"]
    assert metrics["counts"] == {"train": 45, "holdout": 15, "unseen": 10}
    report = (base / "pred" / "report.md").read_text()
    assert "## Whole programs (ExecuTorch)" in report and BASELINE in report
    assert (base / "pred" / "programs_pred_vs_measured.png").exists()


def test_predict_programs_prints_one_line_per_program(trained, tmp_path, capsys):
    base, status, _ = trained
    specs = make_specs(5, seed=42)
    path = tmp_path / "programs.jsonl"
    path.write_text("".join(json.dumps({**s, "id": f"p{i}"}) + "\n" for i, s in enumerate(specs)) + "\n")
    assert main(["predict", "--predictor", str(base / "pred"), "--programs", str(path), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["id"] for line in lines] == [f"p{i}" for i in range(5)]
    expected = predictor.load(base / "pred").predict_programs(specs)
    np.testing.assert_allclose([line["latency_ms"] for line in lines], expected["latency_ms"], rtol=1e-5)
    assert all(line["conv_ms"] > 0 and line["other_ms"] > 0 and line["model"] == "program model" for line in lines)
    assert main(["predict", "--predictor", str(base / "pred"), "--programs", str(path)]) == 0
    assert "whole-program latency from program model" in capsys.readouterr().out


def test_predict_programs_refuses_a_bad_spec_in_one_sentence(trained, tmp_path, capsys):
    base, _, _ = trained
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"input": [1, 3, 8, 8], "nodes": [{"op": "conv", "cout": 4, "k": 9, "pad": 0}]}) + "\n")
    assert main(["predict", "--predictor", str(base / "pred"), "--programs", str(path)]) == 2
    err = capsys.readouterr().err
    assert "kernel 9" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_profile_without_programs_trains_a_layer_predictor_and_says_so(tmp_path):
    profile = build_profile(tmp_path / "profile", with_programs=False)
    result = pipeline.train(profile, tmp_path / "pred", model="linear")
    card = json.loads((tmp_path / "pred" / "card.json").read_text())
    assert card["program_model"] is None and card["program_metrics"] is None and card["runtime"] == "executorch"
    loaded = predictor.load(tmp_path / "pred")
    assert loaded.program_model is None and "sum of dense layers" in loaded.program_note
    assert result["programs"] is None
    assert "no program model" in (tmp_path / "pred" / "report.md").read_text()


def test_a_profile_from_the_old_runner_is_refused_in_one_sentence(tmp_path, capsys):
    profile = build_profile(tmp_path / "profile", with_programs=False, runner={"version": "0.1.0"})
    assert main(["train", "--profile", str(profile), "--out", str(tmp_path / "pred")]) == 2
    err = capsys.readouterr().err
    assert "re-profile" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_program_sample_efficiency_reports_holdout_accuracy_per_budget(trained):
    base, _, _ = trained
    with ProfileStore(base / "profile") as store:
        rows = store.program_measurements()
    layer_model = predictor.load(base / "pred").model
    from jcw.predictor.program_eval import program_data

    data = program_data(layer_model, rows)
    curve = efficiency.program_efficiency(data, (10, 20, 200), repeats=3, seed=1)
    assert [p["budget"] for p in curve] == [10, 20, 45]
    assert [p["draws"] for p in curve] == [3, 3, 1]
    for point in curve:
        assert 0 <= point["holdout"]["within10_min"] <= point["holdout"]["within10"] <= 1
        assert point["unseen"]["n"] == 10
    assert curve[-1]["holdout"]["within10"] >= 0.9
    assert len(efficiency.program_table(curve)[0]) == len(efficiency.PROGRAM_HEADER)
    with pytest.raises(PredictorError, match="repeats"):
        efficiency.program_efficiency(data, (10,), repeats=0)
