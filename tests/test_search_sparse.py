"""Issue 10 in the search: under --runtime sparse the latency a population gets is the sparse engine's whole-network
prediction of the same candidates' program specs; every candidate carries both runtimes; run.json and front.json
record the runtime; `jcw export` of a sparse run writes and measures the .jcwnet against that prediction; a model
the engine cannot run is one sentence. The predictor is the synthetic layer model of test_program_model with
program models for both runtimes (or without the sparse one: the engine's layers summed)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from jcw.__main__ import main
from jcw.predictor.persistence import Predictor
from jcw.profiler import engine_plan
from jcw.search import zoo
from jcw.search.errors import SearchError
from jcw.search.genome import SearchSpace
from jcw.search.graph import read_model
from jcw.search.objectives import LatencyModel
from search_standin import MacsPredictor
from test_program_model import CARD, fitted_program_model, layer_model  # noqa: F401
from test_sparse_program_model import fitted_sparse_model

SMALL = {"digits": (1, 1, 8, 8), "mobilenet_v2": (1, 3, 64, 64), "resnet18": (1, 3, 64, 64)}


@pytest.fixture(scope="module")
def both_runtimes(layer_model):  # noqa: F811
    return Predictor(layer_model, CARD, None, fitted_program_model(layer_model), fitted_sparse_model(layer_model))


def _space(name, **kw):
    model, _ = zoo.build(name)
    return SearchSpace(read_model(model, torch.randn(*SMALL[name])), name=name, **kw)


def _population(space, n=6, seed=0):
    rng = np.random.default_rng(seed)
    return np.vstack([space.uniform(1.0, 1.0), space.uniform(1.0, 0.1), space.uniform(0.5, 0.3),
                      rng.integers(space.xl, space.xu + 1, size=(n, space.n_var))])


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("with_sparse_model", [True, False])
def test_sparse_latency_is_the_engines_prediction_of_the_same_specs(name, with_sparse_model, both_runtimes,
                                                                    layer_model):  # noqa: F811
    predictor = both_runtimes if with_sparse_model else Predictor(layer_model, CARD, None,
                                                                  both_runtimes.program_model, None)
    space = _space(name)
    X = _population(space)
    specs = [space.program_spec(x) for x in X]
    latency = LatencyModel(predictor, space, "sparse")
    got = latency(X)
    assert latency.calls == 2                                  # one layer call, one program call per population
    on_engine = predictor.predict_programs(specs, runtime="sparse")
    np.testing.assert_allclose(got, on_engine["latency_ms"], rtol=1e-9)
    if not with_sparse_model:                                  # the fallback: the engine's layers summed
        np.testing.assert_allclose(got, on_engine["layers_ms"], rtol=1e-9)
    assert len(set(np.round(got, 9))) == len(X)                # widths and densities both move it

    by = latency.by_runtime(X)
    np.testing.assert_allclose(by["sparse"], got, rtol=1e-12)
    np.testing.assert_allclose(by["executorch"], predictor.predict_programs(specs)["latency_ms"], rtol=1e-9)
    assert not np.allclose(by["sparse"], by["executorch"])
    names = [layer.name for layer in space.graph.layers]
    vectorised = space.program.engine.plan(space.channels(X), space.densities(X))["layout"]
    for i, spec in enumerate(specs):                           # per-layer kernels and layouts: the engine's plan
        plan = engine_plan.spec_plan(spec)
        assert {n for n, s in zip(names, by["sparse_layers"][i]) if s} == plan["sparse"]
        assert {n for n, s in zip(names, by["nchw_layers"][i]) if s} == plan["nchw_depthwise"]
        assert (vectorised["conversions"][i], vectorised["conversion_elems"][i]) == (
            plan["conversions"], plan["conversion_elems"])
    assert by["sparse_layers"][0].sum() == 0 and by["sparse_layers"][1].sum() == space.n_density
    if name == "mobilenet_v2":
        assert by["nchw_layers"][1].sum() > 0                 # depthwise layers between sparse ones run NCHW


def test_a_stand_in_without_program_models_sums_the_layers_as_the_engine_runs_them():
    """Every groups-1 convolution below density 1 runs sparse, even where its sparse kernel is the slower one."""
    space = _space("resnet18")
    standin = MacsPredictor()
    latency = LatencyModel(standin, space, "sparse")
    X = _population(space, n=3, seed=2)
    total = latency(X)
    assert standin.calls == 1 and latency.sparse_program_note.startswith("sum of layers as the engine runs them")
    predicted = standin.predict(space.columns(X))
    runs = space.densities(X) < 1.0
    shape = runs.shape
    engine = np.where(runs, predicted["sparse_ms"].reshape(shape), predicted["dense_ms"].reshape(shape))
    np.testing.assert_allclose(total, engine.sum(axis=1))
    slower = runs & (predicted["sparse_ms"].reshape(shape) > predicted["dense_ms"].reshape(shape))
    assert slower.any() and not np.allclose(total, predicted["best_ms"].reshape(shape).sum(axis=1))
    layers, sparse = latency.per_layer(X)
    assert np.array_equal(sparse, runs) and np.allclose(layers.sum(axis=1), total)


class Pooled(nn.Module):
    """Average pooling: ExecuTorch runs it, the sparse engine does not."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 1), nn.Linear(16, 4)

    def forward(self, x):
        x = nn.functional.avg_pool2d(torch.relu(self.a(x)), 2)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.b(x)), 1), 1))


def test_a_model_the_engine_cannot_run_is_refused_under_sparse_only(both_runtimes):
    space = SearchSpace(read_model(Pooled().eval(), torch.randn(1, 3, 16, 16)), name="pooled")
    with pytest.raises(SearchError, match=r"^the sparse engine cannot run program node 'avg_pool2d' \(avgpool\), "
                                          r"so --runtime sparse cannot search this model"):
        LatencyModel(both_runtimes, space, "sparse").check_program()
    executorch = LatencyModel(both_runtimes, space, "executorch")
    by = executorch.by_runtime(np.array([space.uniform(0.5, 1.0)]))
    assert by["sparse"] is None and by["executorch"][0] > 0 and "avgpool" in executorch.engine_error


@pytest.fixture(scope="module")
def saved_predictor(layer_model, tmp_path_factory):  # noqa: F811
    from jcw import predictor

    directory = tmp_path_factory.mktemp("sparse-search") / "predictor"
    predictor.save(layer_model, directory, {**CARD, "device_address": "local"}, fitted_program_model(layer_model),
                   fitted_sparse_model(layer_model))
    return directory


def _run(capsys, *argv):
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_the_commands_refuse_what_the_engine_cannot_run_in_one_sentence(saved_predictor, tmp_path, capsys,
                                                                        monkeypatch):
    (tmp_path / "engine_refusals.py").write_text(
        "import torch\nfrom test_search_sparse import Pooled\n"
        "def pooled():\n    return Pooled()\n"
        "def hardswish():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Hardswish(),\n"
        "                               torch.nn.Conv2d(8, 4, 1))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = "engine_refusals"
    for function, said in (("pooled", "cannot run program node 'avg_pool2d' (avgpool)"),
                           ("hardswish", "cannot run the model's Hardswish (1)")):
        status, out, err = _run(capsys, "search", "--predictor", str(saved_predictor), "--model",
                                f"{module}:{function}", "--input-shape", "1,3,16,16", "--runtime", "sparse",
                                "--pop", "8", "--gens", "2", "--out", str(tmp_path / function))
        assert status != 0 and said in err and err.count("\n") == 1 and "Traceback" not in err
        assert "--runtime executorch" in err and not (tmp_path / function).exists()
    status, out, err = _run(capsys, "search", "--predictor", str(saved_predictor), "--model", f"{module}:pooled",
                            "--input-shape", "1,3,16,16", "--pop", "8", "--gens", "2", "--out", str(tmp_path / "e"))
    assert status == 0 and "sparse engine latency unknown" in out
    meta = json.loads((tmp_path / "e" / "run.json").read_text())
    assert "avgpool" in meta["sparse_unavailable"]
    assert all(set(c["latency_ms_by_runtime"]) == {"executorch"}
               for c in json.loads((tmp_path / "e" / "front.json").read_text()))
    for flags, said in ((["--no-width"], "--no-width chooses the genome of --runtime sparse"),
                        (["--runtime", "sparse", "--no-width", "--no-density"], "leaves nothing to search")):
        status, _, err = _run(capsys, "search", "--predictor", str(saved_predictor), "--model", "digits", *flags,
                              "--out", str(tmp_path / "x"))
        assert status != 0 and said in err and err.count("\n") == 1


@pytest.fixture(scope="module")
def sparse_run(saved_predictor, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "sparse"
    status = main(["search", "--predictor", str(saved_predictor), "--model", "digits", "--runtime", "sparse",
                   "--pop", "12", "--gens", "4", "--out", str(out)])
    assert status == 0
    return out


def test_a_sparse_run_records_the_engine_and_both_runtimes(sparse_run, both_runtimes):
    meta = json.loads((sparse_run / "run.json").read_text())
    assert meta["runtime"] == "sparse" and meta["settings"]["runtime"] == "sparse"
    assert meta["algorithm"] == "nsga2" == meta["settings"]["algorithm"]      # the default: JCW's NSGA-II
    assert meta["sparse_program_model"] == "sparse program model (linear)" == both_runtimes.sparse_program_note
    assert meta["program_model"] == "program model (linear)" and "sparse_unavailable" not in meta
    assert "sparse engine" in meta["latency_meaning"] and ".jcwnet" in meta["note"]
    assert "runs every layer dense on ExecuTorch" in meta["note"]
    front = json.loads((sparse_run / "front.json").read_text())
    lines = [json.loads(line) for line in (sparse_run / "programs.jsonl").read_text().splitlines()]
    specs = [line["spec"] for line in lines]
    engine = both_runtimes.predict_programs(specs, runtime="sparse")["latency_ms"]
    pte = both_runtimes.predict_programs(specs)["latency_ms"]
    for cand, on_engine, on_pte in zip(front, engine, pte):
        assert cand["runtime"] == "sparse" and cand["latency_ms"] == cand["latency_ms_by_runtime"]["sparse"]
        assert cand["latency_ms"] == pytest.approx(on_engine, rel=1e-9)
        assert cand["latency_ms_by_runtime"]["executorch"] == pytest.approx(on_pte, rel=1e-9)
        for layer, density in zip(cand["layers"], cand["densities"]):
            runs = density < 1.0 and layer["op"] == "conv"
            assert layer["impl"] == ("sparse" if runs else "dense") and layer["layout"] in ("nchw", "nhwc")
            assert layer["layout"] == "nchw" or not runs
    assert any(layer["impl"] == "sparse" for cand in front for layer in cand["layers"])
    unpruned = next(r for r in meta["references"] if r["kind"] == "width" and r["value"] == 1.0)
    assert set(unpruned["latency_ms_by_runtime"]) == {"executorch", "sparse"}


def test_width_only_and_density_only_genomes(saved_predictor, tmp_path, capsys):
    genes = {}
    for flag in ("--no-density", "--no-width"):
        status, _, _ = _run(capsys, "search", "--predictor", str(saved_predictor), "--model", "digits", "--runtime",
                            "sparse", flag, "--pop", "8", "--gens", "2", "--out", str(tmp_path / flag))
        assert status == 0
        meta = json.loads((tmp_path / flag / "run.json").read_text())
        front = json.loads((tmp_path / flag / "front.json").read_text())
        genes[flag] = meta["n_genes"]
        if flag == "--no-density":
            assert all(set(c["densities"]) == {1.0} and {x["impl"] for x in c["layers"]} == {"dense"} for c in front)
        else:
            assert all(set(c["widths"]) == {1.0} for c in front)
    assert genes == {"--no-density": 4, "--no-width": 4}      # 4 free channel groups; 4 groups-1 convolutions


@pytest.mark.parametrize("algorithm", ["nsga3", "spea2"])
def test_another_pymoo_algorithm_is_a_flag_away_and_recorded(saved_predictor, tmp_path, capsys, algorithm):
    out = tmp_path / algorithm
    status, table, _ = _run(capsys, "search", "--predictor", str(saved_predictor), "--model", "digits", "--runtime",
                            "sparse", "--algorithm", algorithm, "--pop", "8", "--gens", "3", "--out", str(out))
    assert status == 0 and "jcw search: digits" in table
    meta = json.loads((out / "run.json").read_text())
    front = json.loads((out / "front.json").read_text())
    assert meta["algorithm"] == algorithm == meta["settings"]["algorithm"] and meta["generations_done"] == 3
    assert front and [c["latency_ms"] for c in front] == sorted(c["latency_ms"] for c in front)


def test_a_sparse_search_starts_from_dense_and_unpruned_genomes(both_runtimes):
    """Under --runtime sparse the first population keeps about half the density genes dense (density 1.0 is the
    dense kernel there) and holds the unpruned genome; under executorch it draws every gene from the spread."""
    from jcw.search.objectives import PruningProblem
    from jcw.search.pymoo_parts import PymooPruningProblem
    from jcw.search.run import SearchSettings, run_search
    space = _space("resnet18")
    first = {}

    def record(gen, result):
        first.setdefault(gen, result.X)

    run_search(space, both_runtimes, lambda X: np.zeros(len(X)), SearchSettings(runtime="sparse", pop=64, gens=1),
               record)
    X = first[1]
    density = X[:, space.n_width:]
    assert (X == space.xu).all(axis=1).any()                                # the unpruned genome
    assert 0.4 < (density == space.xu[space.n_width:]).mean() < 0.8         # about half dense (+ the spread's top)
    problem = PymooPruningProblem(PruningProblem(space, LatencyModel(both_runtimes, space, "sparse"), None))
    from jcw.search.pymoo_parts import SpreadSampling
    plain = SpreadSampling().do(problem, 64, random_state=np.random.default_rng(0)).get("X")[:, space.n_width:]
    assert (plain == space.xu[space.n_width:]).mean() < 0.3


@pytest.mark.slow
def test_export_of_a_sparse_run_measures_the_network_file_against_its_prediction(sparse_run, tmp_path, capsys):
    from jcw.profiler.netfile import read_net
    front = json.loads((sparse_run / "front.json").read_text())
    sparse = [c for c in front if any(layer["impl"] == "sparse" for layer in c["layers"])]
    budget = min(c["latency_ms"] for c in sparse)
    status, out, err = _run(capsys, "export", "--run", str(sparse_run), "--pick", repr(budget), "--device", "local",
                            "--json", "--out", str(tmp_path / "m.pte"))
    assert status == 0, err
    report = json.loads(out)
    chosen = front[report["candidate"]]
    assert chosen["latency_ms"] <= budget and report["export_runtime"] == "sparse" == report["run_runtime"]
    assert report["net_predicted_ms"] == chosen["latency_ms_by_runtime"]["sparse"] == chosen["latency_ms"]
    assert report["predicted_ms"] == chosen["latency_ms_by_runtime"]["executorch"]
    assert report["measured_ms"] > 0 and report["net_measured_ms"] > 0 and report["net_measure_error"] is None
    assert report["net_ratio"] == pytest.approx(report["net_measured_ms"] / report["net_predicted_ms"])
    ran_sparse = sorted(layer["name"] for layer in chosen["layers"] if layer["impl"] == "sparse")
    assert sorted(read_net(tmp_path / "m.jcwnet").sparse_layers) == sorted(report["net_sparse_layers"]) == ran_sparse
    assert report["net_max_abs_error"] < 1e-3 and report["max_abs_err"] < 1e-4

