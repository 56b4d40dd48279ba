"""`jcw demo` end to end on this machine: profile (layers and whole programs), train, search and export
chained as a user runs them, ending with the .pte measured against its prediction."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--runner-arg=--min-time-ms=2", "--runner-arg=--min-reps=2"]


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "jcw", "demo", "--out", str(out), "--budget", "40",
                           "--programs", "4", "--gens", "4", "--pop", "8", *FAST],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    card = json.loads((out / "predictor" / "card.json").read_text())
    assert len(card["training_data_hash"]) == 64
    front = json.loads((out / "run" / "front.json").read_text())
    assert front and all(c["latency_ms"] > 0 and 0 <= c["accuracy"] <= 1 for c in front)
    assert (out / "model.pte").stat().st_size > 0
    # it ends with the exported program measured here against its whole-program prediction
    report = json.loads((out / "model.export.json").read_text())
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("jcw demo:") and f"measured/predicted {report['ratio']:.2f}" in last
    assert report["device"] == "local" and report["runtime"] == "executorch"
    assert json.loads((out / "run" / "run.json").read_text())["runtime"] == "executorch"


def test_demo_rejects_a_bad_budget(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jcw", "demo", "--out", str(tmp_path), "--budget", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "jcw demo: --budget must be at least 1, got 0"
