"""The whole-program latency model (predictor/programs.py) on synthetic programs: specs built with
profiler.programs, latencies from a known non-negative law plus noise. Checks the parts, the recovery of
the law, the choice of the correction by grouped cross-validation, the vectorised entry, and saved
predictors with and without a program model (round trip, tampering, old formats refused)."""
import json
import random

import numpy as np
import pytest

from jcw import predictor
from jcw.predictor import PredictorError
from jcw.predictor.models import LatencyPredictor
from jcw.predictor.programs import TERMS, ProgramModel, design, spec_parts
from jcw.profiler import programs
from jcw.profiler.layerspec import LayerSpec

# ---- synthetic programs ----------------------------------------------------------------------


def _width(rng, base):
    return max(4, int(base * rng.choice((0.25, 0.5, 0.75, 1.0, 1.25))))


def residual(rng, name="res"):
    hw, w = rng.choice((16, 24, 32)), _width(rng, 32)
    nodes = [{"name": "stem", "op": "conv", "cout": w, "k": 3, "stride": 1, "act": "relu"},
             {"name": "pool", "op": "maxpool", "k": 3, "stride": 2, "pad": 1}]
    last = "pool"
    for b in range(rng.randint(1, 4)):
        nodes += [{"name": f"b{b}a", "op": "conv", "cout": _width(rng, 32), "k": 3, "inputs": [last], "act": "relu"},
                  {"name": f"b{b}b", "op": "conv", "cout": w, "k": 3},
                  {"name": f"b{b}", "op": "add", "inputs": [f"b{b}b", last], "act": "relu"}]
        last = f"b{b}"
    nodes += [{"name": "gap", "op": "gap"}, {"name": "flat", "op": "flatten"},
              {"name": "fc", "op": "linear", "cout": 10}]
    return {"name": f"{name}-{rng.random():.6f}", "family": name, "input": [1, 3, hw, hw], "nodes": nodes}


def mobile(rng, name="mobile"):
    hw, w = rng.choice((16, 32, 48)), _width(rng, 16)
    nodes = [{"name": "stem", "op": "conv", "cout": w, "k": 3, "stride": 2, "act": "relu6"}]
    for b in range(rng.randint(2, 6)):
        nodes += [{"name": f"dw{b}", "op": "conv", "cout": w, "k": 3, "groups": w, "stride": 1 + (b % 3 == 2)},
                  {"name": f"r{b}", "op": "relu6"},
                  {"name": f"pw{b}", "op": "conv", "cout": (w := _width(rng, 24)), "k": 1, "act": "relu6"}]
    nodes += [{"name": "avg", "op": "avgpool", "k": 2}, {"name": "gap", "op": "gap"},
              {"name": "flat", "op": "flatten"}, {"name": "fc", "op": "linear", "cout": rng.choice((10, 100))}]
    return {"name": f"{name}-{rng.random():.6f}", "family": name, "input": [1, 3, hw, hw], "nodes": nodes}


def branchy(rng, name="branch"):
    hw, w = rng.choice((16, 32)), _width(rng, 16)
    nodes = [{"name": "stem", "op": "conv", "cout": w, "k": 3}, {"name": "r", "op": "relu"}]
    last = "r"
    for b in range(rng.randint(1, 3)):
        nodes += [{"name": f"x{b}", "op": "conv", "cout": _width(rng, 16), "k": 1, "inputs": [last]},
                  {"name": f"y{b}", "op": "conv", "cout": _width(rng, 16), "k": 3, "inputs": [last], "act": "relu"},
                  {"name": f"c{b}", "op": "concat", "inputs": [f"x{b}", f"y{b}"]},
                  {"name": f"p{b}", "op": "maxpool", "k": 2}]
        last = f"p{b}"
    nodes += [{"name": "flat", "op": "flatten"}, {"name": "fc", "op": "linear", "cout": 10}]
    return {"name": f"{name}-{rng.random():.6f}", "family": name, "input": [1, 3, hw, hw], "nodes": nodes}


def plain(rng, name="plain"):
    hw = rng.choice((16, 32))
    nodes = [{"name": f"c{i}", "op": "conv", "cout": _width(rng, 24), "k": rng.choice((1, 3)), "act": "relu"}
             for i in range(rng.randint(2, 5))]
    nodes += [{"name": "gap", "op": "gap"}, {"name": "fc", "op": "linear", "cout": 10}]
    return {"name": f"{name}-{rng.random():.6f}", "family": name, "input": [1, 3, hw, hw], "nodes": nodes}


FAMILIES = {"res": residual, "mobile": mobile, "branch": branchy, "plain": plain}


def make_specs(n, seed, families=tuple(FAMILIES)):
    rng = random.Random(seed)
    return [programs.validate(FAMILIES[families[i % len(families)]](rng)) for i in range(n)]


#: The known law: ms per unit of every term (conv factor, per-element costs, MACs, per node/layer/program).
TRUE = {"conv_ms": 1.15, "add_elems": 2e-6, "act_elems": 1e-6, "maxpool_elems": 6e-7, "avgpool_elems": 8e-7,
        "gap_elems": 1.5e-6, "concat_rows": 2.5e-5, "linear_macs": 4e-7,
        "nodes": 0.004, "convs": 0.006, "program": 0.05}


def fake_layer_ms(columns):
    """A stand-in layer predictor's dense ms: proportional to MACs plus a per-call cost."""
    out_h = (columns["h"] + 2 * columns["pad"] - columns["k"]) // columns["stride"] + 1
    out_w = (columns["w"] + 2 * columns["pad"] - columns["k"]) // columns["stride"] + 1
    cin = np.where(columns["op"] == "dwconv", 1, columns["cin"])
    return 2e-6 * out_h * out_w * columns["cout"] * cin * columns["k"] ** 2 + 0.003


def synthetic(specs, noise=0.0, seed=0, law=TRUE, layer_ms=fake_layer_ms):
    """(design, measured ms) of specs under `law`, each program multiplied by (1 + N(0, noise))."""
    parts = spec_parts(specs)
    conv = ~parts["is_linear"]
    conv_ms = np.bincount(parts["layer_program"][conv], weights=layer_ms(parts["layers"])[conv],
                          minlength=parts["n"])
    x = design(conv_ms, parts["ops"], parts["n_nodes"], parts["n_conv"])
    truth = x @ np.array([law[t] for t in TERMS])
    return x, truth * (1 + np.random.default_rng(seed).normal(0, noise, len(truth)))


# ---- parts ------------------------------------------------------------------------------------
def test_design_counts_elements_per_kind_linear_macs_and_nodes():
    spec = programs.validate({"name": "t", "input": [1, 3, 16, 16], "nodes": [
        {"name": "c1", "op": "conv", "cout": 8, "k": 3, "act": "relu"},
        {"name": "p", "op": "maxpool", "k": 3, "stride": 2, "pad": 1},
        {"name": "c2", "op": "conv", "cout": 8, "k": 3, "groups": 8},
        {"name": "a", "op": "add", "inputs": ["c2", "p"], "act": "relu"},
        {"name": "r", "op": "relu6"}, {"name": "g", "op": "gap"}, {"name": "f", "op": "flatten"},
        {"name": "fc", "op": "linear", "cout": 10}]})
    parts = spec_parts([spec])
    assert list(parts["layers"]["op"]) == ["conv", "dwconv", "conv"] and list(parts["is_linear"]) == [0, 0, 1]
    x = design([2.0], parts["ops"], parts["n_nodes"], parts["n_conv"])[0]
    got = dict(zip(TERMS, x))
    assert got["conv_ms"] == 2.0 and got["program"] == 1.0
    assert got["nodes"] == 8 and got["convs"] == 3
    assert got["maxpool_elems"] == 8 * 8 * 8 * 9 + 8 * 8 * 8      # window reads + writes
    assert got["add_elems"] == 2 * 512 + 512                       # both operands + the output
    # relu6 and flatten are one kind: each reads and writes every element once
    assert got["act_elems"] == (512 + 512) + (8 + 8) and got["gap_elems"] == 512 + 8
    assert "flatten_elems" not in got and got["concat_rows"] == 0
    assert got["linear_macs"] == 8 * 10


@pytest.mark.parametrize("inputs, copies", [(2, 2), (5, 5), (6, 7), (9, 10), (10, 12)])
def test_a_concatenation_costs_one_row_copy_per_input_row_plus_its_chain_links(inputs, copies):
    """ExecuTorch splits a concatenation of more than 5 tensors into a chain of <= 5-input links, each
    link after the first re-reading the previous one's output: 6-9 inputs are 2 links, 10-13 are 3."""
    nodes = [{"name": f"b{i}", "op": "conv", "cout": 1 + i, "k": 1, "inputs": ["input"]} for i in range(inputs)]
    nodes.append({"name": "cat", "op": "concat", "inputs": [f"b{i}" for i in range(inputs)]})
    parts = spec_parts([programs.validate({"name": "t", "input": [1, 3, 8, 6], "nodes": nodes})])
    got = dict(zip(TERMS, design([1.0], parts["ops"], parts["n_nodes"], parts["n_conv"])[0]))
    assert got["concat_rows"] == copies * 8 * 6, "rows, whatever the channels of each input"


def test_bad_parts_are_refused_in_one_sentence():
    ops = {"program": np.array([0]), "op": np.array(["softmax"], dtype=object), **{
        f: np.ones(1) for f in ("c", "h", "w", "out_c", "out_h", "out_w", "k", "stride")}}
    with pytest.raises(PredictorError, match="softmax"):
        design([1.0], ops, [3], [1])
    with pytest.raises(PredictorError, match="index"):
        design([1.0], {**ops, "op": np.array(["add"], dtype=object), "program": np.array([4])}, [3], [1])
    with pytest.raises(PredictorError, match="shape"):
        design([1.0, 2.0], {**ops, "op": np.array(["add"], dtype=object)}, [3], [1, 1])
    with pytest.raises(PredictorError, match="program node"):
        spec_parts([{"input": [1, 3, 8, 8], "nodes": [{"op": "conv", "cout": 4}]}])


# ---- fitting ----------------------------------------------------------------------------------
def test_the_law_is_recovered_from_noise_free_programs():
    x, y = synthetic(make_specs(120, seed=1))
    model = ProgramModel("linear").fit(x, y)
    coef = dict(zip(TERMS, model.coef_))
    for term in ("conv_ms", "add_elems", "act_elems", "maxpool_elems", "linear_macs", "program"):
        assert coef[term] == pytest.approx(TRUE[term], rel=0.02), term
    np.testing.assert_allclose(model.predict(x), y, rtol=1e-3)


def test_noisy_programs_are_predicted_within_the_noise_on_unseen_genomes():
    x, y = synthetic(make_specs(80, seed=2), noise=0.02, seed=2)
    model = ProgramModel("auto").fit(x, y, groups=[s["family"] for s in make_specs(80, seed=2)])
    x_new, y_new = synthetic(make_specs(60, seed=3))
    rel = np.abs(model.predict(x_new) / y_new - 1)
    assert np.mean(rel <= 0.10) >= 0.95 and np.median(rel) < 0.04
    assert model.kind_ == "linear", "a linear law with noise needs no correction"
    assert set(model.cv_) == {"linear", "corrected"} and set(model.cv_["linear"]) == {"family", "program"}
    assert model.cv_["linear"]["family"]["grouped_by"] == "family"
    assert np.all(model.coef_ >= 0)


def test_a_multiplicative_effect_the_law_misses_is_picked_up_by_the_correction():
    specs = make_specs(160, seed=4)
    x, y = synthetic(specs, noise=0.01, seed=4)
    # Long programs run 30% slower than the law says (say, a cache effect): no additive term can say so.
    y = y * np.where(x[:, TERMS.index("nodes")] > 12, 1.3, 1.0)
    model = ProgramModel("auto").fit(x, y, groups=[s["family"] for s in specs])
    assert model.kind_ == "corrected", model.cv_
    for split in ("family", "program"):
        assert model.cv_["corrected"][split]["within10"] > model.cv_["linear"][split]["within10"] + 0.1
    x_new, y_new = synthetic(make_specs(60, seed=5))
    y_new = y_new * np.where(x_new[:, TERMS.index("nodes")] > 12, 1.3, 1.0)
    assert np.mean(np.abs(model.predict(x_new) / y_new - 1) <= 0.10) >= 0.9


def test_an_operator_kind_never_trained_on_costs_the_pooled_element_cost():
    specs = make_specs(60, seed=6, families=("res", "plain"))  # no average pool, no concatenation
    law = {**TRUE, **{f"{k}_elems": 2e-6 for k in ("add", "act", "maxpool", "avgpool", "gap")}}
    x, y = synthetic(specs, law=law)
    model = ProgramModel("linear").fit(x, y)
    assert model.state()["borrowed"] == ["avgpool"], "concatenations cost rows and are never borrowed"
    # every element-moving operator costs the same here, so the pooled cost is that cost
    assert model.coef_[TERMS.index("avgpool_elems")] == pytest.approx(2e-6, rel=0.05)
    x_new, y_new = synthetic(make_specs(20, seed=7, families=("mobile",)), law=law)   # avgpool-heavy
    np.testing.assert_allclose(model.predict(x_new), y_new, rtol=0.02)


def test_fit_refuses_what_it_cannot_learn_from():
    x, y = synthetic(make_specs(10, seed=7))
    with pytest.raises(PredictorError, match="at least 4"):
        ProgramModel("linear").fit(x[:3], y[:3])
    with pytest.raises(PredictorError, match="positive latency"):
        ProgramModel("linear").fit(x, -y)
    with pytest.raises(PredictorError, match="kind"):
        ProgramModel("forest").fit(x, y)


# ---- a predictor with a program model ------------------------------------------------------------
def synthetic_layer_rows(n=120, seed=0):
    """Layer rows as a profile would hold them, latencies from fake_layer_ms (µs)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        op = rng.choice(("conv", "conv", "dwconv"))
        cin = rng.choice((4, 8, 16, 32, 64))
        spec = LayerSpec(op=op, cin=cin, cout=cin if op == "dwconv" else rng.choice((4, 8, 16, 32, 64)),
                         k=rng.choice((1, 3)), h=rng.choice((1, 4, 8, 16, 32)), w=1, stride=1)
        spec = spec.replace(w=spec.h, k=min(spec.k, spec.h))
        columns = {k: np.array([v]) for k, v in spec.to_dict().items()}
        us = 1000 * fake_layer_ms(columns)[0]
        rows.append({**spec.to_dict(), "impl": "dense", "latency_us": us, "sample": "random"})
        if op == "conv":
            rows.append({**spec.to_dict(), "impl": "sparse", "latency_us": us * 1.5, "sample": "random"})
    return rows


@pytest.fixture(scope="module")
def layer_model():
    return LatencyPredictor("linear").fit(synthetic_layer_rows())


def fitted_program_model(layer_model, kind="linear", n=60, seed=8):
    specs = make_specs(n, seed=seed)
    x, y = synthetic(specs, noise=0.01, seed=seed, layer_ms=lambda c: layer_model.predict_dense(c))
    return ProgramModel(kind).fit(x, y, groups=[s["family"] for s in specs])


CARD = {"runner": {"version": "0.2.0"}, "threads": 1}


@pytest.mark.parametrize("kind", ["linear", "corrected"])
def test_saved_program_model_round_trips_and_the_parts_entry_agrees(layer_model, tmp_path, kind):
    program_model = fitted_program_model(layer_model, kind)
    predictor.save(layer_model, tmp_path / kind, CARD, program_model)
    loaded = predictor.load(tmp_path / kind)
    assert loaded.card["runtime"] == "executorch" and loaded.card["program_model"]["kind"] == kind
    assert (tmp_path / kind / "programs.skops").exists() == (kind == "corrected")
    specs = make_specs(12, seed=9)
    out = loaded.predict_programs(specs)
    assert set(out) >= {"latency_ms", "conv_ms", "other_ms"}
    fresh = predictor.persistence.Predictor(layer_model, {}, None, program_model).predict_programs(specs)
    np.testing.assert_array_equal(out["latency_ms"], fresh["latency_ms"])
    np.testing.assert_allclose(out["conv_ms"] + out["other_ms"], out["latency_ms"], rtol=1e-12)
    assert np.all(out["conv_ms"] > 0) and np.all(out["other_ms"] > 0)
    # The vectorised entry the search calls gives the same figures from its arrays.
    parts = spec_parts(specs)
    conv = ~parts["is_linear"]
    conv_ms = np.bincount(parts["layer_program"][conv], weights=loaded.predict_dense(parts["layers"])[conv],
                          minlength=len(specs))
    np.testing.assert_allclose(loaded.predict_program_parts(conv_ms, parts["ops"], parts["n_nodes"], parts["n_conv"]),
                               out["latency_ms"], rtol=1e-12)
    # Density buys nothing under ExecuTorch: pruning weights leaves the prediction unchanged.
    pruned = [{**s, "nodes": [{**n, "density": 0.2} if n["op"] == "conv" else n for n in s["nodes"]]} for s in specs]
    np.testing.assert_array_equal(loaded.predict_programs(pruned)["latency_ms"], out["latency_ms"])


def test_without_program_model_a_program_is_the_sum_of_its_dense_layers(layer_model, tmp_path):
    predictor.save(layer_model, tmp_path / "p", CARD)
    loaded = predictor.load(tmp_path / "p")
    assert loaded.card["program_model"] is None and loaded.program_model is None
    assert "sum of dense layers" in loaded.program_note
    specs = make_specs(6, seed=10)
    out = loaded.predict_programs(specs)
    for i, spec in enumerate(specs):
        layers = [layer for _, layer in programs.conv_layers(spec)]
        assert out["latency_ms"][i] == pytest.approx(layer_model.predict_dense(layers).sum(), rel=1e-12)
    parts = spec_parts(specs)
    conv = ~parts["is_linear"]
    conv_ms = np.bincount(parts["layer_program"][conv], weights=loaded.predict_dense(parts["layers"])[conv],
                          minlength=len(specs))
    np.testing.assert_allclose(loaded.predict_program_parts(conv_ms, parts["ops"], parts["n_nodes"], parts["n_conv"]),
                               out["latency_ms"], rtol=1e-12)


def _rehash(directory, name):
    import hashlib
    card = json.loads((directory / "card.json").read_text())
    card["files"][name] = hashlib.sha256((directory / name).read_bytes()).hexdigest()
    (directory / "card.json").write_text(json.dumps(card))


def test_a_tampered_or_malformed_program_model_is_refused(layer_model, tmp_path):
    target = tmp_path / "t"
    predictor.save(layer_model, target, CARD, fitted_program_model(layer_model, "corrected"))
    state = json.loads((target / "programs.json").read_text())
    edited = dict(state, coef={**state["coef"], "conv_ms": state["coef"]["conv_ms"] * 2})
    (target / "programs.json").write_text(json.dumps(edited))
    with pytest.raises(PredictorError, match="does not match the hash"):
        predictor.load(target)
    edited = dict(state, coef={**state["coef"], "conv_ms": -1.0})
    (target / "programs.json").write_text(json.dumps(edited))
    _rehash(target, "programs.json")
    with pytest.raises(PredictorError, match="malformed"):
        predictor.load(target)
    # a program model from a jcw whose law had other terms (before concatenations cost row copies)
    old_terms = [t.replace("concat_rows", "concat_elems") for t in state["terms"]]
    (target / "programs.json").write_text(json.dumps(dict(state, terms=old_terms)))
    _rehash(target, "programs.json")
    with pytest.raises(PredictorError, match="another version of jcw .*jcw train") as info:
        predictor.load(target)
    assert len(str(info.value).splitlines()) == 1
    # ... and still serves as a prior, which needs only its layer model
    from jcw.predictor import priors
    prior = priors.load_prior(target)
    assert prior.loaded.program_model is None and prior.loaded.model is not None
    (target / "programs.json").write_text(json.dumps(state))
    _rehash(target, "programs.json")
    predictor.load(target)
    blob = bytearray((target / "programs.skops").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (target / "programs.skops").write_bytes(bytes(blob))
    with pytest.raises(PredictorError, match="does not match the hash"):
        predictor.load(target)


@pytest.mark.parametrize("change, words", [
    ({"format_version": 2}, "not a sum of convolutions"),
    ({"runner": {"version": "0.1.4"}}, "runner version"),
    ({"runtime": "sparse"}, "runtime"),
])
def test_older_or_foreign_predictors_are_refused_in_one_sentence(layer_model, tmp_path, change, words):
    predictor.save(layer_model, tmp_path / "p", CARD)
    card = json.loads((tmp_path / "p" / "card.json").read_text())
    (tmp_path / "p" / "card.json").write_text(json.dumps({**card, **change}))
    with pytest.raises(PredictorError, match=words) as info:
        predictor.load(tmp_path / "p")
    assert len(str(info.value).splitlines()) == 1
