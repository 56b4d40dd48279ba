"""The latency estimator and the `jcw train` / `jcw predict` commands, on a small real profile
measured with the host runner (see predictor_profile.py)."""
import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from jcw import predictor
from jcw.__main__ import main
from jcw.predictor import LatencyPredictor, PredictorError
from jcw.predictor.evaluation import latencies, predict_rows
from jcw.predictor.features import as_columns, physical, rows_to_columns
from jcw.predictor.models import _PHYSICAL_TERMS, TREE_GROUPINGS, PhysicalModel, tree_group_keys
from jcw.profiler.layerspec import LayerBatch, LayerSpec, write_jsonl
from predictor_profile import small_profile, small_rows, trained_predictor  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def fitted(small_rows):
    training, _ = small_rows
    return LatencyPredictor("hybrid").fit(training)


def test_predict_returns_the_contract_for_specs_and_columns(fitted):
    layers = [LayerSpec(op="conv", cin=64, cout=128, k=3, h=28, w=28, density=0.3),
              LayerSpec(op="dwconv", cin=96, cout=96, k=3, h=56, w=56, stride=2),
              LayerSpec(op="conv", cin=512, cout=1000, k=1, h=1, w=1, density=0.1)]
    out = fitted.predict(layers)
    assert set(out) == {"dense_ms", "sparse_ms", "best_ms", "best_impl"}
    assert all(len(v) == 3 for v in out.values())
    assert out["dense_ms"].dtype == np.float64 and out["best_impl"].dtype == object
    assert np.isnan(out["sparse_ms"][1]) and out["best_impl"][1] == "dense"
    assert np.all(out["dense_ms"] > 0) and np.all(out["sparse_ms"][[0, 2]] > 0)
    np.testing.assert_array_equal(out["best_ms"], np.fmin(out["dense_ms"], out["sparse_ms"]))
    assert list(out["best_impl"]) == ["sparse" if s < d else "dense" for d, s in zip(out["dense_ms"], out["sparse_ms"])]
    again = fitted.predict(LayerBatch.from_specs(layers))
    for key in ("dense_ms", "best_ms"):
        np.testing.assert_array_equal(again[key], out[key])


def test_predictions_are_positive_and_finite_on_many_layers(fitted, small_rows):
    training, holdout = small_rows
    columns = as_columns(rows_to_columns(training + holdout))
    out = fitted.predict(columns)
    assert np.all(np.isfinite(out["dense_ms"])) and np.all(out["dense_ms"] > 0)
    conv = columns["op"] == "conv"
    assert np.all(out["sparse_ms"][conv] > 0) and np.all(np.isnan(out["sparse_ms"][~conv]))


def test_predictions_grow_with_macs_where_the_measurements_do(fitted, small_rows):
    training, _ = small_rows
    dense = [r for r in training if r["impl"] == "dense"]
    macs = physical(as_columns(rows_to_columns(dense)))["macs"]
    rho, _ = spearmanr(macs, latencies(dense))
    assert rho > 0.8, "the profile itself does not say that more MACs take longer"
    for base in (dict(op="conv", k=3, h=28, w=28), dict(op="conv", k=1, h=14, w=14, density=0.2),
                 dict(op="conv", k=3, h=56, w=56, stride=2, density=0.5)):
        sweep = [LayerSpec(cin=64, cout=c, **base) for c in (16, 32, 64, 128, 256, 512)]
        out = fitted.predict(sweep)
        for key in ("dense_ms", "sparse_ms"):
            assert np.all(np.diff(out[key]) > 0), (base, key, out[key])
    sweep = [LayerSpec(op="dwconv", cin=c, cout=c, k=3, h=56, w=56) for c in (16, 32, 64, 128, 256, 512)]
    assert np.all(np.diff(fitted.predict(sweep)["dense_ms"]) > 0)


def test_dense_latency_ignores_density_and_shared_predictions_match_one_by_one(fitted):
    layers = [LayerSpec(op="conv", cin=96, cout=64, k=k, h=28, w=28, density=d)
              for k in (1, 3) for d in (0.05, 0.3, 0.7, 1.0)]
    out = fitted.predict(layers)
    assert len(set(out["dense_ms"][:4])) == 1 and len(set(out["dense_ms"][4:])) == 1
    assert out["dense_ms"][0] != out["dense_ms"][4]
    assert len(set(out["sparse_ms"][:4])) == 4, "the sparse kernel's latency must follow density"
    one_by_one = [fitted.predict([layer]) for layer in layers]
    np.testing.assert_allclose(out["dense_ms"], [o["dense_ms"][0] for o in one_by_one], rtol=1e-12)
    np.testing.assert_allclose(out["sparse_ms"], [o["sparse_ms"][0] for o in one_by_one], rtol=1e-12)


def test_sparse_is_picked_where_the_measurements_say_it_wins(fitted, small_rows):
    training, holdout = small_rows
    by_layer = {}
    for r in training + holdout:
        by_layer.setdefault((r["op"], r["cin"], r["cout"], r["k"], r["stride"], r["h"], r["w"], r["density"]),
                            {})[r["impl"]] = r
    clear = [(pair["dense"], pair["sparse"]) for pair in by_layer.values() if "sparse" in pair and "dense" in pair
             and (pair["sparse"]["latency_us"] < 0.5 * pair["dense"]["latency_us"]
                  or pair["dense"]["latency_us"] < 0.5 * pair["sparse"]["latency_us"])]
    assert len(clear) >= 10
    picks = fitted.predict([LayerSpec.from_dict(dense) for dense, _ in clear])["best_impl"]
    truth = ["sparse" if s["latency_us"] < d["latency_us"] else "dense" for d, s in clear]
    assert np.mean(picks == np.array(truth, dtype=object)) >= 0.85


def test_parameters_are_validated_naming_the_parameter(small_rows):
    training, _ = small_rows
    for kwargs, name in ((dict(model="xgboost"), "'model'"), (dict(n_estimators=0), "'n_estimators'"),
                         (dict(learning_rate=2.0), "'learning_rate'"), (dict(loss="huber"), "'loss'"),
                         (dict(candidates=("linear", "svm")), "'candidates'"), (dict(cv_folds=1), "'cv_folds'"),
                         (dict(tree_groupings=("impl", "impl")), "'tree_groupings'"),
                         (dict(tree_groupings=("by_density",)), "'tree_groupings'")):
        with pytest.raises(PredictorError, match=name):
            LatencyPredictor(**kwargs).fit(training)
    with pytest.raises(PredictorError, match="at least 8"):
        LatencyPredictor().fit(training[:5])
    with pytest.raises(PredictorError, match="not fitted"):
        LatencyPredictor().predict([LayerSpec(op="conv", cin=8, cout=8, k=1, h=1, w=1)])


def test_every_tree_grouping_has_its_groups_trees_and_the_prediction_is_their_mean(small_rows):
    training, holdout = small_rows
    model = LatencyPredictor("hybrid", tree_groupings=TREE_GROUPINGS).fit(training)
    assert set(model.estimator_) == {key for g in TREE_GROUPINGS for key in tree_group_keys(g)}
    assert {"dense", "sparse", "op:dwconv/dense", "op_kernel:convkxk/sparse"} <= set(model.estimator_)
    singles = {g: LatencyPredictor("hybrid", tree_groupings=(g,)).fit(training) for g in TREE_GROUPINGS}
    columns = rows_to_columns([r for r in training + holdout if r["impl"] == "dense"])
    logs = [np.log(single.predict_impl(columns, "dense")) for single in singles.values()]
    assert np.allclose(np.log(model.predict_impl(columns, "dense")), np.mean(logs, axis=0))
    assert not np.allclose(logs[0], logs[2])  # the groupings really differ


def test_auto_picks_the_family_with_the_best_cross_validation(small_rows):
    training, _ = small_rows
    model = LatencyPredictor(candidates=("linear", "rf")).fit(training)
    assert set(model.cv_scores_) == {"linear", "rf"}
    assert model.kind_ == max(model.cv_scores_, key=model.cv_scores_.get)


def test_beats_macs_proportional_on_the_real_network_holdout(fitted, small_rows):
    from jcw.predictor.baselines import MacsProportional
    from jcw.predictor.evaluation import metrics

    training, holdout = small_rows
    ours = metrics(predict_rows(fitted, holdout), latencies(holdout))
    macs = metrics(predict_rows(MacsProportional().fit(training), holdout), latencies(holdout))
    assert ours["rmspe"] < macs["rmspe"] and ours["within10"] > macs["within10"]


def test_jcw_train_prints_the_table_and_writes_predictor_and_report(trained_predictor):
    out_dir, status, printed = trained_predictor
    assert status == 0
    for heading in ("random split", "unseen shapes", "real-network", "noise floor", "nn-meter-rf", "jcw-interpolation",
                    "network level"):
        assert heading in printed
    card = json.loads((out_dir / "card.json").read_text())
    assert card["runner"]["version"] and card["device_facts"] and len(card["training_data_hash"]) == 64
    assert {"random split", "unseen shapes", "real-network holdout"} <= set(card["metrics"])
    report = (out_dir / "report.md").read_text()
    assert "Network level" in report and "noise floor" in report
    for png in ("pred_vs_measured.png", "error_histogram.png"):
        assert (out_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_jcw_predict_prints_one_json_line_per_layer(trained_predictor, tmp_path, capsys):
    out_dir, _, _ = trained_predictor
    layers = tmp_path / "layers.jsonl"
    write_jsonl(layers, [{"id": "stem", "op": "conv", "cin": 3, "cout": 32, "k": 3, "h": 224, "w": 224, "stride": 2},
                         {"op": "dwconv", "cin": 32, "cout": 32, "k": 3, "h": 112, "w": 112},
                         {"id": 7, "op": "conv", "cin": 32, "cout": 64, "k": 1, "h": 112, "w": 112,
                          "density": 0.1}])
    assert main(["predict", "--predictor", str(out_dir), "--layers", str(layers), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["id"] for line in lines] == ["stem", "2", "7"]
    assert lines[1]["sparse_ms"] is None and lines[1]["best_impl"] == "dense"
    expected = predictor.load(out_dir).predict([LayerSpec.from_dict(o) for o in (
        {"op": "conv", "cin": 32, "cout": 64, "k": 1, "h": 112, "w": 112, "density": 0.1},)])
    assert lines[2]["best_ms"] == pytest.approx(expected["best_ms"][0], rel=1e-5)
    assert main(["predict", "--predictor", str(out_dir), "--layers", str(layers)]) == 0
    assert "total" in capsys.readouterr().out


@pytest.mark.parametrize("line, words", [('{"op": "conv", "cin": 0, "cout": 4, "k": 1, "h": 1, "w": 1}', "'cin'"),
                                          ("not json", "not valid JSON")])
def test_jcw_predict_bad_layers_file_gives_one_sentence(trained_predictor, tmp_path, capsys, line, words):
    out_dir, _, _ = trained_predictor
    layers = tmp_path / "bad.jsonl"
    layers.write_text(line + "\n")
    assert main(["predict", "--predictor", str(out_dir), "--layers", str(layers)]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_jcw_train_on_a_missing_profile_gives_one_sentence(tmp_path, capsys):
    assert main(["train", "--profile", str(tmp_path / "nope"), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "no profile" in err and "Traceback" not in err


def test_the_physical_model_recovers_the_im2col_cost_per_row_segment_and_strided_byte():
    """Sparse k x k layers whose latency is work plus a cost per gathered row segment and per strided byte (as the
    runner's im2col pays): the non-negative fit finds both costs and predicts shapes it never saw."""
    rng = np.random.default_rng(0)

    def layers(n):
        return [LayerSpec(op="conv", cin=int(rng.integers(2, 64)), cout=int(rng.integers(2, 64)), k=3,
                          stride=int(rng.choice([1, 2])), pad=1, h=int(h), w=int(h),
                          density=float(rng.choice([0.1, 0.5])))
                for h in rng.integers(4, 128, n)]

    def latency(columns):
        phys = physical(columns)
        rows = phys["im2col_bytes"] / (phys["out_hw"] * 4)
        return (2e-5 * phys["effective_macs"] + 5e-3 * rows * phys["out_h"] + 4e-5 * phys["im2col_strided_bytes"]
                + 1e-5 * phys["im2col_bytes"] + 0.05)

    train, unseen = as_columns(layers(300)), as_columns(layers(100))
    model = PhysicalModel().fit(train, np.full(300, "sparse", dtype=object), latency(train))
    coef = dict(zip((*_PHYSICAL_TERMS, "constant"), model.coef_["conv/sparse"], strict=True))
    assert coef["im2col_segments"] == pytest.approx(5e-3, rel=0.05)
    assert coef["im2col_strided_bytes"] == pytest.approx(4e-5, rel=0.05)
    np.testing.assert_allclose(model.predict(unseen, "sparse"), latency(unseen), rtol=0.02)
