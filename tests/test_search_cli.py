"""`jcw search` and `jcw export`: bad input gets one sentence and exit status 2; a real run writes its
run directory; the same seed gives the same front; export produces a .pte that runs."""
import json
import subprocess
import sys

import pytest

from jcw.__main__ import main


def _run(capsys, *argv):
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("argv,message", [
    (["--model", "resnet99", "--predictor", "nowhere"], "unknown model 'resnet99'"),
    (["--model", "resnet18", "--predictor", "nowhere", "--budgets", "20,x"], "--budgets must be positive"),
    (["--model", "resnet18", "--predictor", "nowhere", "--budgets", "-5"], "--budgets must be positive"),
    (["--model", "resnet18", "--predictor", "nowhere"], "predictor nowhere does not exist"),
    (["--model", "os:getcwd", "--predictor", "nowhere"], "needs --input-shape"),
    (["--model", "resnet18", "--predictor", "nowhere", "--input-shape", "1,3,x"], "--input-shape must be"),
    (["--model", "resnet18", "--predictor", "nowhere", "--pop", "2"], "--pop must be an integer >= 4"),
    (["--model", "resnet18", "--predictor", "nowhere", "--min-latency", "5", "--max-latency", "3"],
     "--min-latency must be >= 0 and below --max-latency"),
    (["--model", "resnet18", "--predictor", "nowhere", "--accuracy", "digits"], "--accuracy digits needs --model"),
    (["--model", "resnet18", "--predictor", "nowhere", "--bound", "first=0.5"], "the name must be one of"),
    (["--model", "resnet18", "--predictor", "nowhere", "--bound", "min_width=2"], "bound 'min_width' must be in"),
    (["--model", "resnet18", "--predictor", "nowhere", "--algorithm", "agemoea"],
     "--algorithm must be one of nsga2, nsga2-crowding, nsga3"),
])
def test_search_bad_input_is_one_sentence(capsys, tmp_path, argv, message):
    status, _, err = _run(capsys, "search", *argv, "--out", str(tmp_path / "run"))
    assert status == 2
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_export_of_a_missing_run_is_one_sentence(capsys, tmp_path):
    status, _, err = _run(capsys, "export", "--run", str(tmp_path), "--pick", "5", "--out", str(tmp_path / "m.pte"))
    assert status == 2 and "not a search run directory" in err and err.count("\n") == 1


def test_search_package_imports_neither_sqlite_nor_the_harness():
    code = ("import sys, jcw.search.cli, jcw.search.run, jcw.search.export, jcw.search.objectives\n"
            "import jcw.search.digits, jcw.search.graph\n"
            "bad = [m for m in sys.modules if m == 'sqlite3' or m.startswith('jcw.android_harness')]\n"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture(scope="module")
def local_predictor(tmp_path_factory):
    """A real predictor: a small profile of this machine measured by the real runner, a linear model, and no
    whole-program model (a profile without programs): whole programs are the sum of dense layers."""
    from jcw.predictor import persistence, pipeline
    from jcw.predictor.models import LatencyPredictor
    root = tmp_path_factory.mktemp("pred")
    subprocess.run([sys.executable, "-m", "jcw", "profile", "--device", "local", "--out", str(root / "profile"),
                    "--budget", "40", "--rounds", "1", "--programs", "0"], check=True, capture_output=True)
    data = pipeline.read_profile(root / "profile")
    model = LatencyPredictor(model="linear").fit(data["training"])
    persistence.save(model, root / "predictor", {"runner": data["runner"], "profile": str(root / "profile"),
                                                 "threads": data["threads"]})
    return root / "predictor"


@pytest.mark.slow
def test_search_writes_a_reproducible_run_and_exports(capsys, tmp_path, local_predictor):
    args = ["search", "--predictor", str(local_predictor), "--model", "digits", "--pop", "16", "--gens", "12",
            "--seed", "3", "--budgets", "0.05,1"]
    status, out, _ = _run(capsys, *args, "--out", str(tmp_path / "a"))
    assert status == 0 and "jcw search: digits" in out
    assert "sum of dense layers (no program model" in out       # said, not hidden
    front = json.loads((tmp_path / "a" / "front.json").read_text())
    assert front and all({"latency_ms", "accuracy", "layers", "widths", "densities", "latency_ms_by_runtime"}
                         <= set(c) for c in front)
    for cand in front:
        assert len(cand["layers"]) == 5 == len(cand["widths"]) == len(cand["densities"])
        assert {layer["impl"] for layer in cand["layers"]} == {"dense"} and set(cand["densities"]) == {1.0}
        # no program model: the whole program is the sum of its layers, dense
        assert cand["latency_ms"] == pytest.approx(sum(layer["predicted_ms"] for layer in cand["layers"]))
    latencies = [c["latency_ms"] for c in front]
    assert latencies == sorted(latencies)
    assert (tmp_path / "a" / "front.png").stat().st_size > 1000
    budgets = json.loads((tmp_path / "a" / "budgets.json").read_text())
    assert [b["budget_ms"] for b in budgets] == [0.05, 1.0]

    status, _, _ = _run(capsys, *args, "--out", str(tmp_path / "b"))
    assert status == 0
    assert (tmp_path / "b" / "front.json").read_text() == (tmp_path / "a" / "front.json").read_text()

    pick = max(latencies)
    status, out, _ = _run(capsys, "export", "--run", str(tmp_path / "a"), "--pick", str(pick), "--reps", "3",
                          "--out", str(tmp_path / "m.pte"))
    assert status == 0 and "measured / predicted" in out
    report = json.loads((tmp_path / "m.export.json").read_text())   # the run knows no device: this host
    assert report["device"].startswith("host") and report["ratio"] == pytest.approx(
        report["measured_ms"] / report["predicted_ms"])
    assert (tmp_path / "m.pte").stat().st_size > 0 and (tmp_path / "m.pruned.pt").exists()
    layers = (tmp_path / "m.layers.jsonl").read_text().splitlines()
    assert len(layers) == 5 and json.loads(layers[0])["id"] == "conv1"

    status, _, err = _run(capsys, "export", "--run", str(tmp_path / "a"), "--pick", "1e-6",
                          "--out", str(tmp_path / "n.pte"))
    assert status == 2 and "no candidate fits" in err
