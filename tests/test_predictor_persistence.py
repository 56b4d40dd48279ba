"""Saved predictors: identical predictions after a round trip, and refusal of tampered, foreign-version
or untrusted files with one sentence (trained on the small real profile of predictor_profile.py)."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import skops.io as skops_io
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from jcw import predictor
from jcw.__main__ import main
from jcw.predictor import LatencyPredictor, PredictorError
from jcw.predictor.features import as_columns, rows_to_columns
from predictor_profile import small_profile, small_rows, trained_predictor  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def hybrid(small_rows):
    return LatencyPredictor("hybrid").fit(small_rows[0])


@pytest.fixture
def saved_copy(trained_predictor, hybrid, tmp_path):
    """The trained predictor's card around a tree model (the CLI may have picked the linear family)."""
    source, status, _ = trained_predictor
    assert status == 0
    target = tmp_path / "copy"
    shutil.copytree(source, target)
    card = json.loads((source / "card.json").read_text())
    predictor.save(hybrid, target, {k: v for k, v in card.items() if k in ("runner", "device_facts", "metrics",
                                                                           "training_data_hash")})
    assert (target / "model.skops").exists()
    return target


def rewrite_card(directory, **changes):
    card = json.loads((directory / "card.json").read_text())
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            card[outer][inner] = value
        else:
            card[key] = value
    (directory / "card.json").write_text(json.dumps(card))


@pytest.mark.parametrize("kind", ["hybrid", "rf", "linear"])
def test_round_trip_gives_identical_predictions(small_rows, tmp_path, kind):
    training, holdout = small_rows
    model = LatencyPredictor(kind).fit(training)
    predictor.save(model, tmp_path / kind, {"runner": {"version": "0.2.0"}})
    loaded = predictor.load(tmp_path / kind)
    columns = as_columns(rows_to_columns(training + holdout))
    before, after = model.predict(columns), loaded.predict(columns)
    for key in ("dense_ms", "sparse_ms", "best_ms"):
        np.testing.assert_array_equal(before[key], after[key])
    np.testing.assert_array_equal(before["best_impl"], after["best_impl"])
    assert loaded.card["model"] == kind and loaded.card["feature_schema_version"] >= 1


def test_a_predictor_saved_before_the_tree_groupings_and_the_im2col_terms_loads(small_rows, tmp_path):
    """Its state has no tree_groupings (one tree model per implementation) and five physical terms and the constant."""
    training, holdout = small_rows
    model = LatencyPredictor("hybrid", tree_groupings=("impl",)).fit(training)
    predictor.save(model, tmp_path / "old", {"runner": {"version": "0.2.0"}})
    state = json.loads((tmp_path / "old" / "model.json").read_text())
    del state["params"]["tree_groupings"]
    # A model fitted without the im2col rows, segments and strided-bytes terms: they weigh 0, the constant stays last.
    state["physical"] = {key: coef[:4] + coef[-1:] for key, coef in state["physical"].items()}
    text = json.dumps(state)
    (tmp_path / "old" / "model.json").write_text(text)
    rewrite_card(tmp_path / "old", **{"files": {**json.loads((tmp_path / "old" / "card.json").read_text())["files"],
                                                "model.json": hashlib.sha256(text.encode()).hexdigest()}})
    loaded = predictor.load(tmp_path / "old")
    assert loaded.model.tree_groupings == ("impl",)
    assert all(len(c) == 8 and c[4:7] == [0.0] * 3 for c in loaded.model.physical_.coef_.values())
    saved = json.loads(text)["physical"]
    assert all(loaded.model.physical_.coef_[key][-1] == coef[-1] for key, coef in saved.items())
    columns = as_columns(rows_to_columns(holdout))
    assert np.all(np.isfinite(loaded.predict(columns)["best_ms"]))


def test_card_names_the_device_runner_schema_data_and_metrics(trained_predictor):
    card = predictor.load(trained_predictor[0]).card
    for key in ("device_facts", "runner", "feature_schema_version", "training_data_hash", "metrics", "files"):
        assert card[key], key
    assert card["metrics"]["real-network holdout"]["n"] > 0


def test_a_modified_model_file_is_refused(saved_copy):
    state = saved_copy / "model.json"
    data = json.loads(state.read_text())
    data["physical"]["conv/dense"][0] *= 2  # a plausible, still well-formed edit
    state.write_text(json.dumps(data))
    with pytest.raises(PredictorError, match="does not match the hash"):
        predictor.load(saved_copy)


def test_a_modified_tree_file_is_refused(saved_copy):
    trees = saved_copy / "model.skops"
    blob = bytearray(trees.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    trees.write_bytes(bytes(blob))
    with pytest.raises(PredictorError, match="does not match the hash"):
        predictor.load(saved_copy)


def test_an_untrusted_type_is_refused_even_with_a_matching_hash(saved_copy):
    def plant(obj):
        skops_io.dump(obj, saved_copy / "model.skops")
        card = json.loads((saved_copy / "card.json").read_text())
        card["files"]["model.skops"] = hashlib.sha256((saved_copy / "model.skops").read_bytes()).hexdigest()
        (saved_copy / "card.json").write_text(json.dumps(card))

    # A file naming a callable of its choice: loading it would let the file pick code to run.
    plant(Pipeline([("f", FunctionTransformer(os.system)), ("m", HistGradientBoostingRegressor(max_iter=2))]))
    with pytest.raises(PredictorError, match="untrusted type"):
        predictor.load(saved_copy)
    # Only types skops trusts by default, but not a tree model: refused as well.
    plant(Pipeline([("f", FunctionTransformer(np.exp)), ("m", HistGradientBoostingRegressor(max_iter=2))]))
    with pytest.raises(PredictorError, match="one tree model per implementation"):
        predictor.load(saved_copy)


@pytest.mark.parametrize("change, words", [
    ({"feature_schema_version": 999}, "feature schema"),
    ({"runner.version": "7.3.0"}, "runner version"),
    ({"format": "something-else"}, "not a jcw predictor"),
    ({"format_version": 42}, "format version"),
])
def test_foreign_versions_are_refused(saved_copy, change, words):
    rewrite_card(saved_copy, **change)
    with pytest.raises(PredictorError, match=words):
        predictor.load(saved_copy)


def test_a_different_runner_series_is_refused_when_asked(saved_copy):
    predictor.load(saved_copy, runner_version="0.2.9")
    with pytest.raises(PredictorError, match="not on runner 0.3.0"):
        predictor.load(saved_copy, runner_version="0.3.0")


def test_missing_or_garbled_directories_are_refused(tmp_path, saved_copy):
    with pytest.raises(PredictorError, match="no predictor directory"):
        predictor.load(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictorError, match="not a saved predictor"):
        predictor.load(tmp_path / "empty")
    (saved_copy / "card.json").write_text("{not json")
    with pytest.raises(PredictorError, match="unreadable"):
        predictor.load(saved_copy)


def test_jcw_predict_on_a_tampered_predictor_says_so_in_one_sentence(saved_copy, tmp_path, capsys):
    rewrite_card(saved_copy, feature_schema_version=0)
    layers = tmp_path / "l.jsonl"
    layers.write_text('{"op": "conv", "cin": 8, "cout": 8, "k": 1, "h": 4, "w": 4}\n')
    assert main(["predict", "--predictor", str(saved_copy), "--layers", str(layers)]) == 2
    err = capsys.readouterr().err
    assert "feature schema" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
