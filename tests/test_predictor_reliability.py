"""`jcw train` and `jcw predict` under issue 14: the profile is opened read-only (an immutable one trains),
failed configurations are counted apart from missing ones, --out is checked before any training, and layers
outside the training ranges are flagged as extrapolated (trained on the small real profile of
predictor_profile.py)."""
import json
import shutil

import pytest

from jcw.__main__ import main
from jcw.predictor import pipeline
from jcw.profiler.layerspec import LayerSpec
from jcw.profiler.store import ProfileStore, config_id
from predictor_profile import small_profile, trained_predictor  # noqa: F401  (fixtures)
from test_fuzz_cli import deny_writes

IN_RANGE = {"id": "usual", "op": "conv", "cin": 64, "cout": 64, "k": 3, "h": 28, "w": 28}
HUGE = {"id": "huge", "op": "conv", "cin": 5000, "cout": 5000, "k": 3, "h": 600, "w": 600}
FAILED_LAYERS = [LayerSpec(op="conv", cin=40 + i, cout=24, k=1, h=14, w=14) for i in range(6)]


@pytest.fixture
def profile_copy(small_profile, tmp_path):
    target = tmp_path / "profile"
    shutil.copytree(small_profile, target)
    return target


def test_train_opens_the_profile_read_only(profile_copy, tmp_path, monkeypatch):
    opened = []
    real = pipeline.ProfileStore

    def spy(directory, **kwargs):
        opened.append(kwargs)
        return real(directory, **kwargs)
    monkeypatch.setattr(pipeline, "ProfileStore", spy)
    try:
        undo = deny_writes(profile_copy)  # immutable: nothing, not even SQLite's side files, can be made there
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        assert main(["train", "--profile", str(profile_copy), "--out", str(tmp_path / "p"), "--model", "linear"]) == 0
    finally:
        undo()
    assert opened == [{"readonly": True}]


def test_failed_configurations_are_counted_apart_from_missing_data(profile_copy, tmp_path, capsys):
    with ProfileStore(profile_copy) as store:
        store.add_plan([(spec, "dense", 1, "random") for spec in FAILED_LAYERS])
        for spec in FAILED_LAYERS[:4]:  # two more are planned but have no result yet
            store.record(config_id(spec, "dense", 1), 0, {"error": "threads must be between 1 and 256"}, batch=99)
    assert main(["train", "--profile", str(profile_copy), "--out", str(tmp_path / "p"), "--model", "linear"]) == 0
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if "training configurations planned" in line)
    assert "4 failed (runner errors), 2 not measured yet" in line


def test_a_profile_where_everything_failed_says_so_not_budget(tmp_path, capsys):
    directory = tmp_path / "all-failed"
    with ProfileStore(directory, create=True) as store:
        store.set_meta("runner", {"version": "0.2.0"})
        store.add_plan([(spec, "dense", 1, "prior") for spec in FAILED_LAYERS])
        for spec in FAILED_LAYERS:
            store.record(config_id(spec, "dense", 1), 0, {"error": "threads must be between 1 and 256"}, batch=1)
    assert main(["train", "--profile", str(directory), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "6 failed with a runner error" in err and "threads must be between 1 and 256" in err
    assert "larger --budget" not in err and len(err.strip().splitlines()) == 1


def test_out_is_checked_before_training(small_profile, tmp_path, monkeypatch, capsys):
    (tmp_path / "a-file").write_text("x")

    def never(*args, **kwargs):
        raise AssertionError("trained although --out cannot be written")
    monkeypatch.setattr(pipeline, "train", never)
    assert main(["train", "--profile", str(small_profile), "--out", str(tmp_path / "a-file" / "p")]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a directory" in err and "Traceback" not in err


def _predict(out_dir, tmp_path, *extra):
    layers = tmp_path / "layers.jsonl"
    layers.write_text("\n".join(json.dumps(layer) for layer in (IN_RANGE, HUGE)) + "\n")
    return main(["predict", "--predictor", str(out_dir), "--layers", str(layers), *extra])


def test_predict_flags_layers_outside_the_training_ranges(trained_predictor, tmp_path, capsys):
    out_dir, status, _ = trained_predictor
    assert status == 0
    assert _predict(out_dir, tmp_path, "--json") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["id"], line["extrapolated"]) for line in lines] == [("usual", False), ("huge", True)]
    assert _predict(out_dir, tmp_path) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "1 of 2 layers" in warnings[0] and "huge" in warnings[0]


def test_a_card_without_training_ranges_answers_unknown(trained_predictor, tmp_path, capsys):
    copy = tmp_path / "old"
    shutil.copytree(trained_predictor[0], copy)
    card = json.loads((copy / "card.json").read_text())
    card.pop("training_ranges")
    (copy / "card.json").write_text(json.dumps(card))
    assert _predict(copy, tmp_path, "--json") == 0
    assert {json.loads(line)["extrapolated"] for line in capsys.readouterr().out.splitlines()} == {None}
    assert _predict(copy, tmp_path) == 0
    assert "warning" not in capsys.readouterr().out
