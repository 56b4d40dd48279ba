"""Issue 9 in the search: the latency it optimises is the whole deployed ExecuTorch program. The program
template of a traced model equals the search's layers and torch's shapes at every genome; under the
executorch runtime density buys nothing; runs record their runtime; export measures the .pte on a device."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jcw.__main__ import EXIT_DEVICE, main
from jcw.predictor import sparse_runtime
from jcw.profiler import programs
from jcw.search import zoo
from jcw.search.errors import SearchError
from jcw.search.genome import SearchSpace
from jcw.search.graph import read_model, trace
from jcw.search.objectives import LatencyModel
from jcw.search.program import ProgramTemplate
from jcw.search.prune import apply_genome

ZOO_SMALL = {"resnet18": (1, 3, 64, 64), "resnet50": (1, 3, 64, 64), "mobilenet_v1": (1, 3, 64, 64),
             "mobilenet_v2": (1, 3, 64, 64), "digits": (1, 1, 8, 8)}
FAST = ["--runner-arg=--min-time-ms=2", "--runner-arg=--min-reps=3", "--runner-arg=--warmup=1"]


def _space(name, shape=None, **kw):
    model, default = zoo.build(name)
    shape = shape or default
    return model, SearchSpace(read_model(model, torch.randn(*shape)), name=name, **kw), shape


def _genomes(space, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return np.vstack([space.uniform(1.0, 1.0), rng.integers(space.xl, space.xu + 1, size=(n, space.n_var))])


# ---- the program template -------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_template_conv_layers_are_the_search_layers_at_every_genome(name):
    _, space, _ = _space(name)                        # zoo input sizes, density genes on
    assert space.program.unmodelled == []
    for x in _genomes(space):
        spec = space.program_spec(x)
        layers = programs.conv_layers(spec)
        assert [n for n, _ in layers] == [layer.name for layer in space.graph.layers]
        assert [s for _, s in layers] == space.layer_specs(x)


@pytest.mark.parametrize("name", list(ZOO_SMALL))
def test_program_spec_validates_and_has_torchs_shapes(name):
    model, space, shape = _space(name, ZOO_SMALL[name], prune_densities=False)   # shapes: widths alone
    example = torch.randn(*shape)
    for x in _genomes(space, n=2, seed=1)[1:]:
        spec = space.program_spec(x)
        assert programs.validate(spec) == spec
        dims = programs.shapes(spec)
        pruned = apply_genome(model, space, x).eval()
        seen = {}
        hooks = [pruned.get_submodule(layer.name).register_forward_hook(
            lambda m, i, o, name=layer.name, seen=seen: seen.__setitem__(name, tuple(o.shape)))
            for layer in space.graph.layers]
        with torch.no_grad():
            out = pruned(example)
        for h in hooks:
            h.remove()
        for layer_name, got in seen.items():               # every layer's output, as torch computes it
            assert dims[layer_name] == (got[1], *(got[2:] or (1, 1))), layer_name
        assert dims[spec["nodes"][-1]["name"]][0] == out.shape[1]
        traced = {n.name: n.meta["tensor_meta"].shape for n in trace(pruned, example).graph.nodes
                  if "tensor_meta" in n.meta and hasattr(n.meta["tensor_meta"], "shape")}
        for node in spec["nodes"]:                           # every other operator too, by its fx name
            if node["op"] not in programs.CONV_OPS:
                got = traced[node["name"]]
                assert dims[node["name"]] == (got[1], *(tuple(got[2:]) or (1, 1))), node["name"]
        # the pruned model read afresh gives the same program (densities aside)
        reread = read_model(pruned, example)
        again = ProgramTemplate(reread, name).spec(np.array([g.channels for g in reread.groups]))
        strip = [{k: v for k, v in n.items() if k != "density"} for n in spec["nodes"]]
        assert strip == [{k: v for k, v in n.items() if k != "density"} for n in again["nodes"]]


def test_resnet_program_fuses_batchnorm_and_activations():
    _, space, _ = _space("resnet18")
    spec = space.program_spec(space.uniform(0.5, 1.0))
    nodes = {n["name"]: n for n in spec["nodes"]}
    assert nodes["conv1"]["act"] == "relu" and nodes["layer1.0.conv2"]["act"] is None
    adds = [n for n in spec["nodes"] if n["op"] == "add"]
    assert len(adds) == 8 and all(n["act"] == "relu" for n in adds)
    assert [n["op"] for n in spec["nodes"][-3:]] == ["gap", "flatten", "linear"]
    assert not any(n["op"] in ("relu", "relu6") for n in spec["nodes"])        # every activation fused
    mobile = _space("mobilenet_v2")[1].program_spec(_space("mobilenet_v2")[1].uniform(1.0, 1.0))
    depthwise = [n for n in mobile["nodes"] if n["op"] == "conv" and n["groups"] > 1]
    assert len(depthwise) == 17 and all(n["act"] == "relu6" for n in depthwise)


class Functional(nn.Module):
    """Functional pooling, concatenation, a mean over H and W, and operators no program spec knows."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(8, 8, 3, padding=1)
        self.se = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.a(x)), 2)
        y = torch.cat([F.hardswish(self.b(x)), torch.clamp(self.c(x), 0, 6)], dim=1)
        y = y * torch.sigmoid(self.se(F.adaptive_avg_pool2d(y, 1)))
        return self.fc(y.mean((2, 3)))


def test_functional_operators_and_unmodelled_ones_are_counted_not_hidden():
    model = Functional().eval()
    example = torch.randn(1, 3, 16, 16)
    template = ProgramTemplate(read_model(model, example), "functional")
    assert sorted(op["op"] for op in template.unmodelled) == ["hardswish", "mul", "sigmoid"]
    spec = template.spec(np.array([g.channels for g in template.graph.groups]))
    ops = [n["op"] for n in spec["nodes"]]
    assert ops.count("concat") == 1 and ops.count("maxpool") == 1 and ops.count("gap") == 2
    assert {n["name"]: n.get("act") for n in spec["nodes"]}["c"] == "relu6"
    assert spec["nodes"][-1]["op"] == "linear"
    with torch.no_grad():
        assert programs.shapes(spec)[spec["nodes"][-1]["name"]] == (model(example).shape[1], 1, 1)


class Permuting(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).permute(0, 2, 3, 1)


def test_an_operator_that_reshapes_beyond_a_program_is_one_sentence():
    graph = read_model(Permuting().eval(), torch.randn(1, 3, 8, 8))
    with pytest.raises(SearchError, match=r"^the model's permute \(permute\) changes tensor shape"):
        ProgramTemplate(graph, "permuting")


# ---- a real predictor with a whole-program model ------------------------------------------------
@pytest.fixture(scope="module")
def program_predictor(tmp_path_factory):
    """This machine profiled by the real runner (layers), plus whole digits programs at five widths exported
    to ExecuTorch and timed by the native .pte runner, stored in the profile and learned by `jcw train`."""
    from jcw.profiler import session
    from jcw.profiler.store import ProfileStore
    from jcw.search.export import export_pte
    from jcw.search.prune import make_permanent

    root = tmp_path_factory.mktemp("program-predictor")
    profile = root / "profile"
    subprocess.run([sys.executable, "-m", "jcw", "profile", "--device", "local", "--out", str(profile),
                    "--budget", "40", "--rounds", "1", "--holdout", "0", "--programs", "0", *FAST],
                   check=True, capture_output=True)
    model, space, shape = _space("digits", prune_densities=False)
    example = torch.randn(*shape)
    with ProfileStore(profile) as store:
        threads = store.get_meta("threads")
        specs, paths = [], []
        for i, width in enumerate((1.0, 0.8, 0.6, 0.4, 0.2)):
            x = space.uniform(width)
            specs.append({**space.program_spec(x), "name": f"digits-w{width}"})
            paths.append(export_pte(make_permanent(apply_genome(model, space, x)).eval(), example, root / f"{i}.pte"))
        store.add_programs([(spec, "train", threads) for spec in specs])
        measured = session.measure_programs("local", paths, threads=threads)
        ids = {p["name"]: p["program_id"] for p in store.programs()}
        batch = store.next_batch_number()
        for spec, result in zip(specs, measured):
            store.record_program(ids[spec["name"]], 0, {"us_min": result["us_min"], "us_median": result["us_median"],
                                                        "reps": result["reps"]}, batch)
    status = main(["train", "--profile", str(profile), "--out", str(root / "predictor"), "--model", "linear"])
    assert status == 0
    from jcw import predictor

    loaded = predictor.load(root / "predictor")
    assert loaded.program_model is not None and loaded.card["threads"] == threads
    return root / "predictor", loaded


def test_executorch_latency_ignores_density_and_matches_the_spec_path(program_predictor):
    _, predictor = program_predictor
    _, space, _ = _space("resnet18")                           # density genes kept, to show they buy nothing
    latency = LatencyModel(predictor, space, "executorch")
    x = space.uniform(0.6, 1.0)
    sparser = space.uniform(0.6, 0.2)
    assert not np.array_equal(x, sparser) and np.array_equal(x[:space.n_width], sparser[:space.n_width])
    a, b = latency(np.array([x, sparser]))
    assert a == b
    on_engine = LatencyModel(predictor, space, "sparse")            # on the engine density changes the kernel
    assert on_engine(sparser[None])[0] != on_engine(x[None])[0]
    assert not np.array_equal(space.columns(x[None])["density"], space.columns(sparser[None])["density"])
    # the vectorised template arrays predict what the full program specs do
    X = _genomes(space, n=3, seed=4)
    by_spec = predictor.predict_programs([space.program_spec(g) for g in X])["latency_ms"]
    assert np.allclose(latency(X), by_spec, rtol=1e-9)


@pytest.mark.slow
def test_resnet18_search_stays_fast(program_predictor):
    """JCW's settings (64 x 128) well under the 30 s target. CPU time of this process, not wall time: the
    test machine may be shared, and a busy neighbour must not fail a fast search."""
    import time

    from jcw.search.objectives import ProxyAccuracy
    from jcw.search.run import SearchSettings, build_space, run_search
    _, predictor = program_predictor
    model, shape = zoo.build("resnet18")
    settings = SearchSettings(pop=64, gens=128)
    space = build_space(model, shape, settings, "resnet18")
    assert space.n_density == 0                                 # executorch: a width-only genome
    proxy = ProxyAccuracy(model, space)
    start = time.process_time()
    result, latency, _ = run_search(space, predictor, proxy, settings)
    assert time.process_time() - start < 30 and len(result.front) > 5


# ---- the commands ---------------------------------------------------------------------------------
def _run(capsys, *argv):
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(scope="module")
def executorch_run(program_predictor, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "executorch"
    status = main(["search", "--predictor", str(program_predictor[0]), "--model", "digits", "--pop", "12",
                   "--gens", "6", "--out", str(out)])
    assert status == 0
    return out


def test_search_records_the_runtime_and_the_whole_program(executorch_run, program_predictor):
    meta = json.loads((executorch_run / "run.json").read_text())
    card = program_predictor[1].card
    assert meta["runtime"] == "executorch" and meta["threads"] == card["threads"]
    assert meta["device_address"] == "local" and meta["unmodelled_ops"] == []
    assert meta["program_model"].startswith("program model") and meta["n_genes"] == 4   # width-only
    front = json.loads((executorch_run / "front.json").read_text())
    lines = [json.loads(line) for line in (executorch_run / "programs.jsonl").read_text().splitlines()]
    assert len(lines) == len(front)
    for cand, line in zip(front, lines):
        assert cand["runtime"] == "executorch" and "note" not in cand
        assert cand["latency_ms"] == cand["latency_ms_by_runtime"]["executorch"]
        assert cand["latency_ms_by_runtime"]["sparse"] > 0 and set(cand["densities"]) == {1.0}
        assert programs.program_id(programs.validate(line["spec"])) == cand["program_id"] == line["program_id"]
    assert all(r["latency_ms_by_runtime"]["executorch"] > 0 for r in meta["references"])


def test_sparse_runtime_says_the_pte_runs_dense(program_predictor, tmp_path, capsys):
    status, out, _ = _run(capsys, "search", "--predictor", str(program_predictor[0]), "--model", "digits",
                          "--runtime", "sparse", "--pop", "8", "--gens", "3", "--out", str(tmp_path / "s"))
    assert status == 0
    assert "NOTE" in out and "runs every layer dense on ExecuTorch" in out
    meta = json.loads((tmp_path / "s" / "run.json").read_text())
    assert meta["runtime"] == "sparse" and "runs every layer dense" in meta["note"] and meta["n_genes"] > 4
    # this profile measured no sparse-engine programs: the engine's layers summed, said as such
    assert meta["sparse_program_model"] == program_predictor[1].sparse_program_note == sparse_runtime.FALLBACK
    for cand in json.loads((tmp_path / "s" / "front.json").read_text()):
        assert cand["runtime"] == "sparse" and "runs every layer dense" in cand["note"]
        assert cand["latency_ms"] == cand["latency_ms_by_runtime"]["sparse"] == pytest.approx(
            sum(layer["predicted_ms"] for layer in cand["layers"]))
        assert cand["latency_ms_by_runtime"]["executorch"] > 0


def test_unmodelled_operators_are_reported_by_the_command(program_predictor, tmp_path, capsys, monkeypatch):
    (tmp_path / "hsmodels.py").write_text(
        "import torch\n"
        "def net():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Hardswish(),\n"
        "                               torch.nn.Conv2d(8, 4, 1))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    status, out, _ = _run(capsys, "search", "--predictor", str(program_predictor[0]), "--model", "hsmodels:net",
                          "--input-shape", "1,3,8,8", "--pop", "8", "--gens", "2", "--out", str(tmp_path / "u"))
    assert status == 0 and "unmodelled operators: 1 (Hardswish)" in out
    meta = json.loads((tmp_path / "u" / "run.json").read_text())
    assert meta["unmodelled_ops"] == [{"name": "1", "op": "Hardswish"}]
    assert all(c["unmodelled_ops"] == ["Hardswish"] for c in json.loads((tmp_path / "u" / "front.json").read_text()))


def test_export_measures_the_pte_on_the_predictors_device(executorch_run, program_predictor, tmp_path, capsys):
    front = json.loads((executorch_run / "front.json").read_text())
    pick = sorted(c["latency_ms"] for c in front)[len(front) // 2]
    status, out, _ = _run(capsys, "export", "--run", str(executorch_run), "--pick", repr(pick),
                          "--out", str(tmp_path / "m.pte"))
    assert status == 0 and "measured / predicted" in out and "us_min of the fastest round" in out
    report = json.loads((tmp_path / "m.export.json").read_text())
    assert report["device"] == "local" and report["runtime"] == "executorch"
    assert report["threads"] == program_predictor[1].card["threads"]
    assert report["measured_ms"] > 0
    assert report["ratio"] == pytest.approx(report["measured_ms"] / report["predicted_ms"])
    chosen = front[report["candidate"]]
    assert report["predicted_ms"] == chosen["latency_ms_by_runtime"]["executorch"] and report["max_abs_err"] < 1e-4
    assert programs.validate(json.loads((tmp_path / "m.program.json").read_text()))["name"] == "digits"

    status, out, _ = _run(capsys, "export", "--run", str(executorch_run), "--pick", repr(pick), "--json",
                          "--device", "host", "--reps", "3", "--out", str(tmp_path / "h.pte"))
    report = json.loads(out)
    assert status == 0 and report["device"].startswith("host") and report["measured_ms"] > 0


def test_export_to_an_unreachable_device_keeps_what_it_wrote(executorch_run, tmp_path, capsys):
    front = json.loads((executorch_run / "front.json").read_text())
    status, _, err = _run(capsys, "export", "--run", str(executorch_run), "--pick", repr(front[-1]["latency_ms"]),
                          "--device", "tcp:127.0.0.1:9", "--out", str(tmp_path / "m.pte"))
    assert status == EXIT_DEVICE and "could not be measured on tcp:127.0.0.1:9" in err and err.count("\n") == 1
    assert "Traceback" not in err
    for name in ("m.pte", "m.layers.jsonl", "m.pruned.pt"):
        assert (tmp_path / name).stat().st_size > 0


# ---- the demo's choices ---------------------------------------------------------------------------
def test_demo_picks_the_fastest_within_one_point_and_the_table_never_repeats(tmp_path):
    from jcw.demo import pick_budget_ms
    from jcw.search.cli import summary_rows
    front = [{"latency_ms": 0.1, "accuracy": 0.90}, {"latency_ms": 0.2, "accuracy": 0.975},
             {"latency_ms": 0.30000000000000004, "accuracy": 0.99}, {"latency_ms": 0.5, "accuracy": 0.995}]
    (tmp_path / "front.json").write_text(json.dumps(front))
    (tmp_path / "run.json").write_text(json.dumps({"references": [{"kind": "width", "value": 1.0,
                                                                   "accuracy": 0.995}]}))
    budget, why = pick_budget_ms(tmp_path)
    assert budget == 0.30000000000000004 and why["accuracy"] == 0.99      # exact: the export must find it
    from jcw.search.export import pick
    assert pick(front, float(repr(budget)))[0] == 2
    rows = summary_rows(front[:2], ())
    assert len(rows) == len({id(c) for _, c in rows}) == 2
    assert len(summary_rows(front, (0.2, 0.2, 0.25))) == 2
