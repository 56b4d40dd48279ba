"""The evaluation protocol: metrics by hand, splits (the grouped split shares no shape), noise floor,
networks assembled from held-out layers, baselines, the acquisition plug-in and the efficiency curve."""
import numpy as np
import pytest

from jcw.predictor import adaptive, baselines, efficiency, evaluation
from jcw.predictor.errors import PredictorError
from jcw.profiler import networks
from jcw.profiler.layerspec import LayerSpec
from predictor_profile import small_profile, small_rows, trained_predictor  # noqa: F401  (fixtures)


def test_metrics_by_hand():
    measured = np.array([100.0, 100.0, 100.0, 100.0])
    predicted = np.array([104.0, 92.0, 113.0, 150.0])
    m = evaluation.metrics(predicted, measured)
    assert m["n"] == 4
    assert m["mape"] == pytest.approx((0.04 + 0.08 + 0.13 + 0.5) / 4)
    assert m["rmspe"] == pytest.approx(np.sqrt((0.04 ** 2 + 0.08 ** 2 + 0.13 ** 2 + 0.5 ** 2) / 4))
    assert (m["within5"], m["within10"], m["within15"]) == (0.25, 0.5, 0.75)


def test_noise_floor_compares_round_two_with_round_one():
    rows = [{"round_latencies": [100.0, 109.0]}, {"round_latencies": [50.0, 40.0]}, {"round_latencies": [7.0]}]
    floor = evaluation.noise_floor(rows)
    assert floor["n"] == 2 and floor["within10"] == 0.5 and floor["mape"] == pytest.approx((0.09 + 0.2) / 2)


def test_label_floor_compares_the_fastest_odd_rounds_with_the_fastest_even_rounds():
    rows = [{"round_latencies": [100.0, 130.0, 140.0, 108.0, 101.0]},   # even 100 vs odd 108: 8 %
            {"round_latencies": [50.0, 40.0, 45.0, 60.0]},              # even 45 vs odd 40: -11 %
            {"round_latencies": [7.0, 7.0, 7.0]}]                       # too few rounds: left out
    floor = evaluation.label_floor(rows)
    assert floor["n"] == 2 and floor["within10"] == 0.5
    assert floor["mape"] == pytest.approx((0.08 + 5 / 45) / 2)
    assert evaluation.label_floor(rows[2:])["n"] == 0


def test_unseen_architecture_layers_are_a_second_held_out_set_reported_beside_the_first(small_profile,
                                                                                        trained_predictor):
    import json

    from jcw.predictor import pipeline

    data = pipeline.read_profile(small_profile)
    assert data["holdout"] and data["unseen"] and {r["sample"] for r in data["unseen"]} == {"unseen"}
    assert not {r["sample"] for r in data["training"]} & {"holdout", "unseen"}
    out_dir, status, printed = trained_predictor
    assert status == 0 and "real-network holdout" in printed and "unseen-architecture holdout" in printed
    card = json.loads((out_dir / "card.json").read_text())
    assert card["unseen_rows"] == len(data["unseen"])
    for name in ("real-network holdout", "unseen-architecture holdout"):
        entry = card["metrics"][name]
        assert entry["n"] > 0 and 0 <= entry["noise_floor_within10"] <= 1 and "label_floor_within10" in entry
    report = (out_dir / "report.md").read_text()
    kinds = {evaluation.layer_kind(r) for r in data["unseen"]}
    assert "## Unseen-architecture layers by kind" in report and all(f"| {kind} |" in report for kind in kinds)


def test_layer_kinds_name_the_groups_errors_are_reported_in():
    def row(**fields):
        return {"op": "conv", "cin": 32, "cout": 64, "k": 3, "h": 28, "w": 28, "impl": "dense", **fields}
    assert evaluation.layer_kind(row(op="dwconv", cout=32, k=5)) == "depthwise 5x5"
    assert evaluation.layer_kind(row(cin=3, h=224, w=224, impl="sparse")) == "stem (sparse)"
    assert evaluation.layer_kind(row(k=1, h=1, w=1)) == "fully connected (dense)"
    assert evaluation.layer_kind(row(k=1)) == "conv 1x1 (dense)" and evaluation.layer_kind(row()) == "conv kxk (dense)"
    groups = evaluation.by_kind([row(), row(k=1), row(cin=48)])
    assert list(groups) == ["conv 1x1 (dense)", "conv kxk (dense)"] and len(groups["conv kxk (dense)"]) == 2


def test_a_rows_layer_key_is_its_layer_specs_identity(small_rows):
    training, _ = small_rows
    assert [evaluation.layer_key(r) for r in training] == [LayerSpec.from_dict(r).key() for r in training]
    dense = next(r for r in training if r["op"] == "conv")
    assert evaluation.layer_key({**dense, "impl": "sparse"}) == evaluation.layer_key(dense)
    assert evaluation.layer_key({**dense, "density": dense["density"] / 2}) != evaluation.layer_key(dense)


def test_grouped_split_shares_no_shape_and_random_split_keeps_layers_whole(small_rows):
    training, _ = small_rows
    for seed in range(3):
        train, test = evaluation.grouped_split(training, 0.25, seed)
        assert train and test and len(train) + len(test) == len(training)
        assert not {evaluation.shape_key(r) for r in train} & {evaluation.shape_key(r) for r in test}
        train, test = evaluation.random_split(training, 0.25, seed)
        assert not {evaluation.layer_key(r) for r in train} & {evaluation.layer_key(r) for r in test}
    with pytest.raises(PredictorError, match="test_fraction"):
        evaluation.grouped_split(training, 1.5, 0)


def test_networks_are_assembled_from_layers_of_the_same_context(small_rows):
    _, holdout = small_rows
    layers = evaluation.measured_layers(holdout)
    assert layers and all("dense" in layer for layer in layers)
    nets, coverage = evaluation.sample_networks(layers, n_networks=8, seed=1)
    assert 0 < coverage <= 1 and len(nets) == 8
    contexts = {(p["op"], p["k"], p["stride"], p["h"]) for name in networks.NETWORKS
                for p in networks.network_layers(name)}
    for net in nets:
        assert all((layers[i]["op"], layers[i]["k"], layers[i]["stride"], layers[i]["h"]) in contexts for i in net)


def test_network_error_is_zero_for_exact_predictions_and_floor_uses_rounds(small_rows):
    _, holdout = small_rows
    layers = evaluation.measured_layers(holdout)
    nets, _ = evaluation.sample_networks(layers, n_networks=10, seed=0)
    exact = np.array([min(layer["dense"], layer.get("sparse", np.inf)) for layer in layers]) / 1000.0
    result = evaluation.network_errors(exact, layers, nets)
    assert result["median"] == pytest.approx(0.0, abs=1e-12) and result["p90"] == pytest.approx(0.0, abs=1e-12)
    assert result["floor_median"] >= 0
    doubled = evaluation.network_errors(exact * 2, layers, nets)
    assert doubled["median"] == pytest.approx(1.0)


def test_best_impl_agreement_counts_only_convs():
    layers = [{"op": "conv", "dense": 10.0, "sparse": 5.0}, {"op": "conv", "dense": 4.0, "sparse": 8.0},
              {"op": "dwconv", "dense": 3.0}]
    picks = np.array(["sparse", "sparse", "dense"], dtype=object)
    result = evaluation.best_impl_agreement(picks, layers)
    assert result["layers"] == 2 and result["agreement"] == 0.5 and result["mean_regret"] == pytest.approx(0.5)


def test_baselines_fit_and_predict_positive_latencies(small_rows):
    training, holdout = small_rows
    for make in (baselines.MacsProportional, baselines.NnMeterForest, baselines.JcwInterpolation):
        predicted = evaluation.predict_rows(make().fit(training), holdout)
        assert np.all(np.isfinite(predicted)) and np.all(predicted > 0), make.__name__


def test_macs_proportional_is_exact_on_proportional_data(small_rows):
    training, _ = small_rows
    from jcw.predictor.features import as_columns, impl_quantities, physical, rows_to_columns
    phys = physical(as_columns(rows_to_columns(training)))
    made = []
    for i, row in enumerate(training):
        work = impl_quantities({k: v[i:i + 1] for k, v in phys.items()}, row["impl"])["work"][0]
        made.append({**row, "latency_us": 3e-3 * work if row["impl"] == "dense" else 7e-3 * work})
    predicted = evaluation.predict_rows(baselines.MacsProportional().fit(made), made)
    np.testing.assert_allclose(predicted, evaluation.latencies(made), rtol=1e-9)


def test_jcw_table_for_resnet18_counts_each_distinct_layer_once():
    size = baselines.jcw_table_size("resnet18")
    # conv1, layer1 3x3, and per later stage: strided 3x3, plain 3x3, 1x1 downsample; plus fc: 12 shapes
    assert size["layers"] == 12
    # conv1 (fixed input) 10 couts, fc (fixed outputs) 10 cins, the other 10 shapes 10 x 10
    assert size["dense"] == 10 + 10 + 10 * 100
    assert size["sparse"] == size["dense"] * 10
    assert size["total"] == size["dense"] + size["sparse"]


def test_acquisition_returns_distinct_indices_and_prefers_the_unknown(small_rows):
    training, _ = small_rows
    familiar = [{**{k: r[k] for k in ("op", "cin", "cout", "k", "stride", "pad", "h", "w", "density")},
                 "impl": r["impl"], "threads": 1} for r in training[:20]]
    # Far outside the profiled space: the bootstrap models disagree most there.
    unknown = [{"op": "conv", "cin": c, "cout": 2048, "k": 7, "stride": 1, "pad": 3, "h": h, "w": h,
                "density": 0.05, "impl": "sparse", "threads": 1}
               for c in (1024, 1536, 2048) for h in (112, 224)]
    candidates = familiar + unknown
    picked = adaptive.choose(candidates, training, 6, seed=3)
    assert len(picked) == len(set(picked)) == 6 and all(0 <= i < len(candidates) for i in picked)
    assert sum(i >= len(familiar) for i in picked) >= 5
    assert adaptive.choose(candidates, training[:5], 3, seed=0) == adaptive.choose(candidates, training[:5], 3, 0)
    assert adaptive.choose(candidates, training, 0, seed=0) == []


def test_acquisition_plugs_into_the_profiler_contract(small_rows):
    from jcw.profiler import acquisition

    training, _ = small_rows
    candidates = [{**{k: r[k] for k in ("op", "cin", "cout", "k", "stride", "pad", "h", "w", "density")},
                   "impl": r["impl"], "threads": 1} for r in training[:30]]
    assert len(acquisition.choose(adaptive.choose, candidates, training[30:], 5, 0)) == 5


@pytest.mark.slow
def test_sample_efficiency_curve_has_both_arms_and_a_reaching_budget(small_rows):
    training, holdout = small_rows
    pool = len({evaluation.layer_key(r) for r in training})
    curve = efficiency.sample_efficiency(training, holdout, (20, pool - 5, pool + 1), model="linear")
    # a budget beyond the pool is skipped; the adaptive arm needs unrevealed layers to choose from
    assert {(p["budget"], p["arm"]) for p in curve} == {(20, "random"), (pool - 5, "random"), (20, "adaptive")}
    assert all(0 <= p["within10"] <= 1 for p in curve)
    repeated = efficiency.sample_efficiency(training, holdout, (20, pool), model="linear", repeats=3,
                                            with_adaptive=False)
    # three different draws of 20 layers, averaged, the worst kept; the whole pool is drawn once
    assert [(p["budget"], p["draws"]) for p in repeated] == [(20, 3), (pool, 1)]
    assert repeated[0]["within10_min"] <= repeated[0]["within10"]
    single = [efficiency.sample_efficiency(training, holdout, (20,), model="linear", seed=s, with_adaptive=False)[0]
              for s in range(3)]
    assert repeated[0]["within10"] == pytest.approx(np.mean([p["within10"] for p in single]))
    assert repeated[0]["within10_min"] == min(p["within10"] for p in single)
    with pytest.raises(PredictorError, match="'repeats'"):
        efficiency.sample_efficiency(training, holdout, (20,), repeats=0)
    fake = [{"budget": 100, "arm": "random", "within10": 0.9}, {"budget": 200, "arm": "random", "within10": 0.96}]
    assert efficiency.first_budget_reaching(fake) == 200 and efficiency.first_budget_reaching(fake[:1]) is None
    fake[1]["within10_min"] = 0.94  # reached on average, not in every draw
    assert efficiency.first_budget_reaching(fake) is None


def test_stable_rows_keep_only_rounds_that_agree():
    rows = [{"round_latencies": [100.0, 104.0]}, {"round_latencies": [100.0, 120.0]}, {"round_latencies": [9.0]}]
    assert evaluation.stable_rows(rows) == rows[:1]
