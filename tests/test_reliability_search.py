"""`jcw search` / `jcw export` limits and output failures (issue 14): sizes checked before anything is
allocated, output directories checked before the search, a run that still cannot be written after a
finished search rescued to a temporary directory, Ctrl-C keeping the front so far (see also
test_fuzz_cli.py for the subprocess cases)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jcw.profiler.cliargs import OutputPathError, check_output_dir, check_output_file
from jcw.search import cli, run
from jcw.search.errors import SearchError
from jcw.search.pymoo_parts import Result


def test_population_memory_cap():
    run.check_population(64, 53)
    assert run.search_bytes(run.max_population(53), 53) <= run.MAX_SEARCH_BYTES
    assert run.search_bytes(run.max_population(53) + 1, 53) > run.MAX_SEARCH_BYTES
    with pytest.raises(SearchError, match=r"--pop 100000000 would need about .* GB of memory, more than the 2 GB"):
        run.SearchSettings(pop=100_000_000)
    with pytest.raises(SearchError, match=r"use --pop \d+ or less"):
        run.check_population(20_000)


def test_input_shape_cap_before_allocating():
    run.check_input_shape((1, 3, 224, 224))
    with pytest.raises(SearchError, match=r"input shape 1,3,100000,100000 needs 112 GB .* more than the 256 MB"):
        run.check_input_shape((1, 3, 100000, 100000))
    with pytest.raises(SearchError, match="input shape"):  # an integer far past int64 is no problem to estimate
        run.check_input_shape((1, 3, 10 ** 30, 10 ** 30))


def test_output_checks(tmp_path):
    check_output_dir(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # checked, not created
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputPathError, match="exists and is not a directory"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(OutputPathError, match="is a file, not a directory"):
        check_output_dir(tmp_path / "f" / "sub")
    with pytest.raises(OutputPathError, match=r"\(300 characters\) is longer than the 255 bytes"):
        check_output_dir(tmp_path / ("x" * 300) / "run")
    with pytest.raises(OutputPathError, match="its directory does not exist"):
        check_output_file(tmp_path / "no" / "m.pte")
    with pytest.raises(OutputPathError, match="it is a directory"):
        check_output_file(tmp_path)
    check_output_file(tmp_path / "m.pte")
    assert not (tmp_path / "m.pte").exists()


def _front_args():
    meta = {"model": "m", "predictor": "p", "settings": {}}
    front = [{"latency_ms": 1.0, "accuracy": 0.5, "runtime": "executorch", "layers": [], "widths": [],
              "densities": [], "genome": [0]}]
    refs = [{"kind": "width", "value": 1.0, "latency_ms": 2.0, "accuracy": 0.6, "latency_ms_by_runtime": {}}]
    return meta, front, refs


def test_a_finished_search_that_cannot_be_written_is_rescued(tmp_path, monkeypatch):
    meta, front, refs = _front_args()
    real = run.write_run

    def fail_there(out, *args, **kwargs):
        if Path(out) == tmp_path / "run":
            raise OSError(28, "No space left on device", str(out / "front.json"))
        return real(out, *args, **kwargs)

    monkeypatch.setattr(run, "write_run", fail_there)
    written, reason = cli._write_or_rescue(tmp_path / "run", meta, front, refs, (), [])
    assert reason == "no space left on the device" and written != tmp_path / "run"
    assert json.loads((written / "front.json").read_text()) == front
    assert json.loads((written / "run.json").read_text())["written_instead_of"] == str(tmp_path / "run")


def test_run_search_hands_back_the_last_generation_on_ctrl_c(monkeypatch):
    """SearchInterrupted carries the last finished generation, so the CLI can write it."""
    def interrupted_run(algorithm, problem, n_gen, seed=0, callback=None):
        result = Result(np.zeros((2, 1), dtype=np.int64), np.zeros((2, 2)), np.zeros(2), 2, 1)
        callback(1, result)
        raise KeyboardInterrupt

    class Space:
        n_var, n_width, n_density = 1, 1, 0
        xl, xu = np.array([0]), np.array([1])

    class Latency:
        def __init__(self, *a):
            pass

        def check_program(self):
            pass

    monkeypatch.setattr(run, "evolve", interrupted_run)
    monkeypatch.setattr(run, "LatencyModel", Latency)
    with pytest.raises(run.SearchInterrupted) as info:
        run.run_search(Space(), None, lambda X: np.zeros(len(X)), run.SearchSettings(pop=4, gens=5))
    assert info.value.result.generations == 1 and isinstance(info.value, KeyboardInterrupt)
