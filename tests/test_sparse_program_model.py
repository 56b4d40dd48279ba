"""The sparse runtime's whole-program model (predictor/sparse_runtime.py) on synthetic engine-runnable programs
whose latency follows a known law over the engine's parts: the law is recovered, the vectorised parts entry the
search calls per generation agrees with the spec entry, saved predictors carry both runtimes' models (an
earlier predictor without the sparse one still loads), and `jcw train` / `jcw predict --runtime sparse` report
the sparse runtime beside ExecuTorch."""
import contextlib
import hashlib
import io
import json
import random

import numpy as np
import pytest

from jcw import predictor
from jcw.__main__ import main
from jcw.predictor import PredictorError, sparse_runtime
from jcw.predictor.models import LatencyPredictor
from jcw.predictor.program_eval import BASELINE, LABEL_FLOOR, OURS
from jcw.predictor.programs import spec_parts as executorch_parts
from jcw.predictor.sparse_runtime import ENGINE_SUM, ENGINE_TERMS, TERMS, SparseProgramModel
from jcw.profiler import engine_plan, programs
from jcw.profiler.store import ProfileStore
from test_program_model import CARD, TRUE, fitted_program_model, layer_model  # noqa: F401
from test_program_pipeline import THREADS, build_profile

DENSITIES = (0.2, 0.5, 1.0)


def engine_residual(rng, name="eres"):
    hw, w = rng.choice((16, 24)), rng.choice((8, 16, 24))
    nodes = [{"name": "stem", "op": "conv", "cout": w, "k": 3, "act": "relu", "density": rng.choice(DENSITIES)},
             {"name": "pool", "op": "maxpool", "k": 3, "stride": 2, "pad": 1}]
    last = "pool"
    for b in range(rng.randint(1, 3)):
        nodes += [{"name": f"b{b}a", "op": "conv", "cout": rng.choice((8, 16, 32)), "k": 3, "inputs": [last],
                   "act": "relu", "density": rng.choice(DENSITIES)},
                  {"name": f"b{b}b", "op": "conv", "cout": w, "k": 1, "density": rng.choice(DENSITIES)},
                  {"name": f"b{b}", "op": "add", "inputs": [f"b{b}b", last], "act": "relu"}]
        last = f"b{b}"
    nodes += [{"name": "gap", "op": "gap"}, {"name": "flat", "op": "flatten"},
              {"name": "fc", "op": "linear", "cout": 10}]
    return {"name": f"{name}-{rng.random():.6f}", "family": name, "input": [1, 3, hw, hw], "nodes": nodes}


def engine_mobile(rng, name="emobile"):
    hw, w = rng.choice((16, 32)), rng.choice((8, 16))
    nodes = [{"name": "stem", "op": "conv", "cout": w, "k": 3, "stride": 2, "act": "relu6",
              "density": rng.choice(DENSITIES)}]
    for b in range(rng.randint(2, 5)):
        nodes += [{"name": f"dw{b}", "op": "conv", "cout": w, "k": 3, "groups": w, "act": "relu6"},
                  {"name": f"pw{b}", "op": "conv", "cout": (w := rng.choice((8, 16, 24))), "k": 1, "act": "relu6",
                   "density": rng.choice(DENSITIES)}]
    nodes += [{"name": "gap", "op": "gap"}, {"name": "flat", "op": "flatten"},
              {"name": "fc", "op": "linear", "cout": rng.choice((10, 100))}]
    return {"name": f"{name}-{rng.random():.6f}", "family": name, "input": [1, 3, hw, hw], "nodes": nodes}


def make_engine_specs(n, seed):
    rng = random.Random(seed)
    return [programs.validate((engine_residual, engine_mobile)[i % 2](rng)) for i in range(n)]


#: The known law of the engine: its own terms, then the executorch law's per-element and fixed costs.
SPARSE_TRUE = {"dense_conv_ms": 1.1, "nchw_dwconv_ms": 1.4, "sparse_conv_ms": 0.9, "conversion_elems": 4e-6,
               "conversions": 0.02, **{t: v for t, v in TRUE.items() if t != "conv_ms"}}


def engine_truth(specs, layer_ms):
    """Measured ms under SPARSE_TRUE, with `layer_ms(columns)` -> (dense ms, sparse ms) per layer."""
    parts = sparse_runtime.spec_parts(specs)

    class Layers:
        @staticmethod
        def predict(columns):
            dense, sparse = layer_ms(columns)
            return {"dense_ms": dense, "sparse_ms": sparse, "best_ms": np.minimum(dense, sparse)}

    engine = sparse_runtime.engine_columns(Layers, parts)
    x = sparse_runtime.sparse_design(engine, parts["ops"], parts["n_nodes"], parts["n_conv"])
    return x, x @ np.array([SPARSE_TRUE[t] for t in TERMS])


def model_layer_ms(model):
    def layer_ms(columns):
        out = model.predict(columns)
        return out["dense_ms"], out["sparse_ms"]
    return layer_ms


def fitted_sparse_model(layer_model, kind="linear", n=50, seed=4):  # noqa: F811
    specs = make_engine_specs(n, seed)
    x, y = engine_truth(specs, model_layer_ms(layer_model))
    y = y * (1 + np.random.default_rng(seed).normal(0, 0.01, len(y)))
    return SparseProgramModel(kind).fit(x, y, groups=[s["family"] for s in specs])


def test_the_sparse_model_recovers_the_engine_law(layer_model):  # noqa: F811
    model = fitted_sparse_model(layer_model)
    coef = dict(zip(TERMS, model.coef_))
    for term in ("dense_conv_ms", "nchw_dwconv_ms", "sparse_conv_ms"):
        assert coef[term] == pytest.approx(SPARSE_TRUE[term], rel=0.1), term
    specs = make_engine_specs(20, seed=99)
    x, truth = engine_truth(specs, model_layer_ms(layer_model))
    assert np.all(np.abs(model.predict(x) / truth - 1) < 0.05)
    latency, conv, other = model.split(x)
    assert np.all((conv > 0) & (other > 0)) and np.allclose(conv + other, latency)
    with pytest.raises(PredictorError, match=f"shape \\(n, {len(TERMS)}\\)"):
        SparseProgramModel("linear").fit(x[:, :-1], truth)


def test_the_parts_entry_agrees_with_the_spec_entry(layer_model, tmp_path):  # noqa: F811
    """What the search does per generation: one topology, n genomes of densities, the engine's plan vectorised
    over them (engine_plan.layout_plan), the layer predictor once, predict_sparse_program_parts."""
    predictor.save(layer_model, tmp_path / "p", CARD, None, fitted_sparse_model(layer_model))
    loaded = predictor.load(tmp_path / "p")
    base = make_engine_specs(2, seed=5)[1]  # a mobile one: depthwise layers that may run NCHW
    rng = np.random.default_rng(0)
    convs = [n for n in base["nodes"] if n["op"] == "conv" and n["groups"] == 1]
    genomes = rng.choice(DENSITIES, size=(8, len(convs)))
    specs = [programs.validate({**base, "nodes": [{**n, "density": float(g[convs.index(n)])} if n in convs else n
                                                  for n in base["nodes"]]}) for g in genomes]
    expected = loaded.predict_programs(specs, runtime="sparse")["latency_ms"]

    n, dims = len(specs), programs.shapes(base)
    elements = {v: np.full(n, float(c * h * w)) for v, (c, h, w) in dims.items()}
    free = {v: np.full(n, c == 1 or h * w == 1) for v, (c, h, w) in dims.items()}
    sparse = {node["name"]: genomes[:, i] < 1.0 for i, node in enumerate(convs)}
    plan = engine_plan.layout_plan(base["nodes"], elements, free, sparse, n)
    names = [name for name, _ in programs.conv_layers(base)]
    parts = executorch_parts(specs)
    predicted = loaded.predict(parts["layers"])
    kinds = {node["name"]: node for node in base["nodes"]}
    runs = np.column_stack([sparse.get(name, np.zeros(n, bool)) for name in names])
    nchw = np.column_stack([plan["nchw_depthwise"].get(name, np.zeros(n, bool)) for name in names])
    conv = np.array([kinds[name]["op"] == "conv" for name in names])
    engine = sparse_runtime.engine_parts(predicted["dense_ms"].reshape(n, -1), predicted["sparse_ms"].reshape(n, -1),
                                         runs, nchw, conv, plan)
    got = loaded.predict_sparse_program_parts(engine, parts["ops"], parts["n_nodes"], parts["n_conv"])
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert len(set(np.round(expected, 9))) > 1  # the densities matter on this runtime
    with pytest.raises(PredictorError, match="lack 'conversions'"):
        loaded.predict_sparse_program_parts({k: v for k, v in engine.items() if k != "conversions"}, parts["ops"],
                                            parts["n_nodes"], parts["n_conv"])
    assert set(ENGINE_TERMS) == set(engine)


def test_predictors_carry_both_runtimes_and_an_earlier_one_still_loads(layer_model, tmp_path):  # noqa: F811
    executorch, sparse = fitted_program_model(layer_model), fitted_sparse_model(layer_model, "corrected")
    predictor.save(layer_model, tmp_path / "both", CARD, executorch, sparse)
    loaded = predictor.load(tmp_path / "both")
    assert loaded.sparse_program_model.kind_ == "corrected" and loaded.program_model.kind_ == "linear"
    assert loaded.card["sparse_program_model"]["kind"] == "corrected" and loaded.card["format_version"] == 3
    specs = make_engine_specs(6, seed=11)
    on_engine, on_pte = loaded.predict_programs(specs, runtime="sparse"), loaded.predict_programs(specs)
    assert not np.allclose(on_engine["latency_ms"], on_pte["latency_ms"])
    np.testing.assert_allclose(on_engine["latency_ms"], sparse.split(engine_truth(specs, model_layer_ms(
        layer_model))[0])[0])
    assert "sparse program model (corrected)" == loaded.sparse_program_note

    # A predictor written before the sparse runtime: no card key, no files. It loads, answers as before for
    # ExecuTorch, and the sparse runtime falls back to the engine's layers summed.
    old = tmp_path / "old"
    predictor.save(layer_model, old, CARD, executorch)
    card = json.loads((old / "card.json").read_text())
    del card["sparse_program_model"]
    (old / "card.json").write_text(json.dumps(card))
    earlier = predictor.load(old)
    assert earlier.sparse_program_model is None and sparse_runtime.FALLBACK == earlier.sparse_program_note
    np.testing.assert_allclose(earlier.predict_programs(specs)["latency_ms"], on_pte["latency_ms"])
    fallback = earlier.predict_programs(specs, runtime="sparse")
    np.testing.assert_allclose(fallback["latency_ms"], fallback["layers_ms"])

    with pytest.raises(PredictorError, match="runtime must be executorch or sparse"):
        loaded.predict_programs(specs, runtime="tflite")
    unrunnable = programs.validate({"name": "c", "input": [1, 3, 8, 8], "nodes": [
        {"name": "a", "op": "conv", "cout": 4, "k": 1},
        {"name": "b", "op": "conv", "cout": 4, "k": 3, "inputs": ["input"]},
        {"name": "cat", "op": "concat", "inputs": ["a", "b"]}]})
    with pytest.raises(PredictorError, match="program 0: the sparse engine cannot run program node 'cat'"):
        loaded.predict_programs([unrunnable], runtime="sparse")


def test_a_tampered_sparse_program_model_is_refused(layer_model, tmp_path):  # noqa: F811
    predictor.save(layer_model, tmp_path / "p", CARD, None, fitted_sparse_model(layer_model))
    path = tmp_path / "p" / "programs_sparse.json"
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, "coef": {**state["coef"], "sparse_conv_ms": 9.0}}))
    with pytest.raises(PredictorError, match="does not match the hash"):
        predictor.load(tmp_path / "p")
    for edit, words in (({"terms": state["terms"][1:]}, "fitted by another version of jcw"),
                        ({"kind": "forest"}, "is malformed")):
        path.write_text(json.dumps({**state, **edit}))
        card = json.loads((tmp_path / "p" / "card.json").read_text())
        card["files"][path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        (tmp_path / "p" / "card.json").write_text(json.dumps(card))
        with pytest.raises(PredictorError, match=f"sparse program model .* {words}"):
            predictor.load(tmp_path / "p")


# ---- `jcw train` and `jcw predict` on a profile with both runtimes ---------------------------------
def add_sparse_programs(directory, seed=0):
    """Engine programs timed in 4 rounds under SPARSE_TRUE with the layer latencies of the model `jcw train
    --model linear` fits on the profile's layers: its layers were all timed at density 1, so a pruned layer's
    sparse latency is that model's (and the test judges the program law, not the layer model's extrapolation)."""
    rng = np.random.default_rng(seed)
    with ProfileStore(directory) as store:
        layers = LatencyPredictor("linear", random_state=0).fit(store.measurements())
    entries = [(s, "train", THREADS) for s in make_engine_specs(40, seed + 20)] + \
              [(s, "holdout", THREADS) for s in make_engine_specs(16, seed + 21)]
    _, truth = engine_truth([s for s, _, _ in entries], model_layer_ms(layers))
    with ProfileStore(directory) as store:
        store.add_programs(entries, runtime="sparse")
        ids = {p["name"]: p["program_id"] for p in store.programs(runtime="sparse")}
        batch = store.next_batch_number()
        for (spec, _, _), ms in zip(entries, truth):
            for round_index in range(4):
                us = 1000 * ms * (1 + abs(rng.normal(0, 0.01)))
                store.record_program(ids[spec["name"]], round_index, {"us_min": us, "us_median": us}, batch)
    return directory


@pytest.fixture(scope="module")
def trained_both(tmp_path_factory):
    base = tmp_path_factory.mktemp("both")
    add_sparse_programs(build_profile(base / "profile"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["train", "--profile", str(base / "profile"), "--out", str(base / "pred"), "--model", "linear"])
    return base, status, printed.getvalue()


def test_train_reports_the_sparse_runtime_beside_executorch(trained_both):
    base, status, text = trained_both
    assert status == 0
    assert "whole-program latency on ExecuTorch" in text and "whole-program latency on the sparse engine" in text
    assert "sparse-engine program model" in text
    card = json.loads((base / "pred" / "card.json").read_text())
    assert card["program_metrics"]["counts"] == {"train": 45, "holdout": 15, "unseen": 10}  # unchanged by sparse
    metrics = card["sparse_program_metrics"]
    assert metrics["counts"] == {"train": 40, "holdout": 16, "unseen": 0} and card["sparse_program_rows"] == 56
    ours, anchor, summed = (metrics["holdout"][k] for k in (OURS, BASELINE, ENGINE_SUM))
    assert ours["within10"] >= 0.9 and ours["median"] < anchor["median"] and ours["median"] < summed["median"]
    assert metrics["holdout"][LABEL_FLOOR]["n"] == 16
    assert card["sparse_program_model"]["coef"]["sparse_conv_ms"] == pytest.approx(0.9, rel=0.15)
    report = (base / "pred" / "report.md").read_text()
    assert "## Whole programs (sparse engine)" in report and "## Whole programs (ExecuTorch)" in report
    assert (base / "pred" / "sparse_programs_pred_vs_measured.png").exists()


def test_predict_programs_on_the_sparse_runtime(trained_both, tmp_path, capsys):
    base, _, _ = trained_both
    specs = make_engine_specs(4, seed=77)
    path = tmp_path / "programs.jsonl"
    path.write_text("".join(json.dumps({**s, "id": f"p{i}"}) + "\n" for i, s in enumerate(specs)))
    pred = str(base / "pred")
    assert main(["predict", "--predictor", pred, "--programs", str(path), "--runtime", "sparse", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = predictor.load(base / "pred").predict_programs(specs, runtime="sparse")
    np.testing.assert_allclose([line["latency_ms"] for line in lines], expected["latency_ms"], rtol=1e-5)
    assert [line["runtime"] for line in lines] == ["sparse"] * 4
    assert [line["sparse_layers"] for line in lines] == list(expected["sparse_layers"])
    assert main(["predict", "--predictor", pred, "--programs", str(path), "--runtime", "sparse"]) == 0
    assert "from sparse program model" in capsys.readouterr().out
    assert main(["predict", "--predictor", pred, "--layers", str(path), "--runtime", "sparse"]) == 2
    err = capsys.readouterr().err
    assert "--runtime applies to --programs" in err and len(err.strip().splitlines()) == 1


def test_train_without_sparse_programs_says_the_engine_falls_back(tmp_path):
    profile = build_profile(tmp_path / "profile")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--profile", str(profile), "--out", str(tmp_path / "pred"), "--model", "linear"]) == 0
    card = json.loads((tmp_path / "pred" / "card.json").read_text())
    assert card["sparse_program_model"] is None and card["sparse_program_metrics"] is None
    assert "programs_sparse.json" not in card["files"]
    assert "no sparse program model" in (tmp_path / "pred" / "report.md").read_text()
