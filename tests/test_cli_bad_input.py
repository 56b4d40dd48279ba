"""Bad input on every `jcw` command, as a demanding user types it: one sentence on stderr, a non-zero exit,
never a traceback. Each case runs the real command in a subprocess; one tiny profile and predictor are shared."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--runner-arg=--min-time-ms=1", "--runner-arg=--min-reps=1", "--holdout", "0", "--rounds", "1"]
GOOD = {"op": "conv", "cin": 8, "cout": 8, "k": 3, "stride": 1, "pad": 1, "h": 8, "w": 8, "density": 1.0}


def jcw(*argv, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "jcw", *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_one_sentence(proc, *words):
    """Non-zero exit, exactly one line on stderr, no traceback; the line names `words`."""
    assert proc.returncode not in (0, None), proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A real (tiny) profile and predictor, plus files a user gets wrong."""
    root = tmp_path_factory.mktemp("bad_input")
    profile, predictor = root / "profile", root / "predictor"
    proc = jcw("profile", "--device", "local", "--out", profile, "--budget", "12", "--programs", "0", *FAST)
    if proc.returncode != 0:
        pytest.fail(f"could not make the shared profile (is the host runner built? `make -C android_harness/native "
                    f"host`): {proc.stderr[-2000:]}")
    proc = jcw("train", "--profile", profile, "--out", predictor, "--model", "linear")
    assert proc.returncode == 0, proc.stderr[-2000:]
    good = root / "good.jsonl"
    good.write_text(json.dumps(GOOD) + "\n")
    return {"root": root, "profile": profile, "predictor": predictor, "good": good}


def copy_predictor(made, name):
    target = made["root"] / name
    target.mkdir()
    for f in made["predictor"].iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    return target


def rehash(directory):
    """Re-sign a hand-edited model.json in its card, as someone tampering on purpose would."""
    card = json.loads((directory / "card.json").read_text())
    card["files"]["model.json"] = hashlib.sha256((directory / "model.json").read_bytes()).hexdigest()
    (directory / "card.json").write_text(json.dumps(card))


# ---- --help ------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["devices", "profile", "measure", "emulate", "train", "predict", "search",
                                     "export", "demo"])
def test_every_command_explains_itself(command):
    proc = jcw(command, "--help")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert proc.stdout.startswith(f"usage: jcw {command}") and len(proc.stdout.splitlines()) > 5


def test_argparse_mistakes_are_one_sentence_pointing_at_help():
    line = assert_one_sentence(jcw("train", "--profile", "x", "--out", "y", "--threads", "0"), "--threads")
    assert line.endswith("(see `jcw train --help`)")
    assert_one_sentence(jcw(), "COMMAND")
    assert_one_sentence(jcw("nosuchcommand"), "nosuchcommand")


# ---- layer files -------------------------------------------------------------------------------
BAD_FIELDS = [("op", "lin"), ("cin", 0), ("cout", -1), ("k", 0), ("stride", 0), ("pad", -1), ("h", 0), ("w", "x"),
              ("density", 0), ("density", 1.5), ("cin", 2.5)]


@pytest.mark.parametrize("field, value", BAD_FIELDS)
def test_measure_names_the_bad_field_and_value(made, field, value):
    path = made["root"] / f"bad_{field}_{value}.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, field: value}) + "\n")
    line = assert_one_sentence(jcw("measure", "--device", "local", "--layers", path),
                               f"'{field}'", repr(value) if isinstance(value, str) else str(value))
    assert f"{path}:2:" in line  # and the line it is on


def test_predict_names_the_bad_field_too(made):
    path = made["root"] / "bad_for_predict.jsonl"
    path.write_text(json.dumps({**GOOD, "density": 0}) + "\n")
    assert_one_sentence(jcw("predict", "--predictor", made["predictor"], "--layers", path), "'density'", "0")


@pytest.mark.parametrize("text, words", [
    ('{"op": "conv", "cin": 1e400, "cout": 8, "k": 3, "h": 8, "w": 8}', ("'cin'", "inf")),        # was OverflowError
    ('{"op": "conv", "cin": NaN, "cout": 8, "k": 3, "h": 8, "w": 8}', ("'cin'", "nan")),          # was ValueError
    ('{"op": "conv", "cin": 1' + "0" * 30 + ', "cout": 8, "k": 3, "h": 8, "w": 8}', ("'cin'", "<=")),  # int64 overflow
    ('{"op": "conv", "cin": 8, "cout": 8, "k": 3, "h": 8, "w": 8, "density": 1' + "0" * 400 + "}", ("'density'",)),
    ('{"op": "conv", "cin": 1' + "0" * 5000 + ', "cout": 8, "k": 3, "h": 8, "w": 8}', ("too long",)),
    ("[" * 100000, ("nested",)),                                                                  # was RecursionError
    ('{"op": "conv", "cin": 8,', ("not valid JSON",)),
    ("", ("holds no layers",)),
    ("[1, 2]", ("JSON object",)),
])
def test_malformed_layer_files(made, text, words):
    path = made["root"] / "malformed.jsonl"
    path.write_text(text + "\n")
    line = assert_one_sentence(jcw("measure", "--device", "local", "--layers", path), *words)
    assert len(line) < 300  # a huge bad value is cut short in the sentence


def test_layer_file_that_is_binary_missing_or_a_directory(made):
    binary = made["root"] / "binary.jsonl"
    binary.write_bytes(bytes(range(256)) * 4)
    assert_one_sentence(jcw("predict", "--predictor", made["predictor"], "--layers", binary), "not UTF-8")
    assert_one_sentence(jcw("predict", "--predictor", made["predictor"], "--layers", made["root"] / "nope.jsonl"),
                        "No such file")
    assert_one_sentence(jcw("measure", "--device", "local", "--layers", made["root"]), "Is a directory")


# ---- profile / measure / devices ---------------------------------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["--device", "foo:bar"], ("not a device address",)),
    (["--device", "tcp:host:notaport"], ("notaport",)),
    (["--device", "tcp:127.0.0.1:1"], ("No device answers",)),
    (["--device", "local", "--budget", "0"], ("--budget",)),
    (["--device", "local", "--rounds", "-1"], ("--rounds",)),
    (["--device", "local", "--threads", "0"], ("--threads",)),
    (["--device", "local", "--runner-arg=--bogus"], ("--bogus",)),  # the half-drawn progress bar used to stay
])
def test_profile_bad_arguments(made, argv, words):
    out = made["root"] / "never"
    assert_one_sentence(jcw("profile", "--out", out, "--budget", "2", "--holdout", "0", "--rounds", "1", *argv),
                        *words)


def test_profile_bad_out_csv_and_corrupt_database(made):
    good = made["good"]
    assert_one_sentence(jcw("profile", "--device", "local", "--out", good, *FAST), "not a directory")
    # --csv is checked before measuring, not after a long profile
    assert_one_sentence(jcw("profile", "--device", "local", "--out", made["root"] / "p2", "--budget", "2",
                            "--programs", "0", "--csv", good / "x.csv", *FAST), "--csv")
    assert not (made["root"] / "p2").exists()
    corrupt = made["root"] / "corrupt"
    corrupt.mkdir()
    (corrupt / "profile.sqlite").write_bytes(os.urandom(4096))
    assert_one_sentence(jcw("profile", "--device", "local", "--out", corrupt, "--budget", "2", "--programs", "0",
                            *FAST), "not a readable profile database")


def test_measure_bad_input(made):
    dw = made["root"] / "dw.jsonl"
    dw.write_text(json.dumps({**GOOD, "op": "dwconv"}) + "\n")
    assert_one_sentence(jcw("measure", "--device", "local", "--layers", dw, "--impl", "sparse"), "dwconv")
    assert_one_sentence(jcw("measure", "--device", "tcp:127.0.0.1:1", "--layers", made["good"]), "No device")


def test_devices_bad_address():
    assert_one_sentence(jcw("devices", "--add", "tcp:host:notaport"), "notaport")


# ---- train ---------------------------------------------------------------------------------------
def test_train_bad_profiles(made):
    root = made["root"]
    corrupt = root / "corrupt_train"
    corrupt.mkdir()
    (corrupt / "profile.sqlite").write_bytes(os.urandom(4096))
    # the spinner used to leave an empty line above the sentence when stderr is not a terminal
    assert_one_sentence(jcw("train", "--profile", corrupt, "--out", root / "never"), "not a readable profile database")


# ---- predict: predictor directories ------------------------------------------------------------------
def test_predict_refuses_bad_predictor_directories(made):
    root, good = made["root"], made["good"]
    empty = root / "empty_predictor"
    empty.mkdir()
    assert_one_sentence(jcw("predict", "--predictor", empty, "--layers", good), "not a saved predictor")
    assert_one_sentence(jcw("predict", "--predictor", root / "nope", "--layers", good), "no predictor")
    assert_one_sentence(jcw("predict", "--predictor", made["profile"], "--layers", good),
                        "is a profile, not a predictor")

    broken_card = copy_predictor(made, "broken_card")
    (broken_card / "card.json").write_text('{"format": "jcw-predictor", ')
    assert_one_sentence(jcw("predict", "--predictor", broken_card, "--layers", good), "unreadable")

    runner_text = copy_predictor(made, "runner_text")  # was AttributeError
    card = json.loads((runner_text / "card.json").read_text())
    (runner_text / "card.json").write_text(json.dumps({**card, "runner": "x"}))
    assert_one_sentence(jcw("predict", "--predictor", runner_text, "--layers", good), "runner")

    edited = copy_predictor(made, "edited")
    with open(edited / "model.json", "a") as fh:
        fh.write(" ")
    assert_one_sentence(jcw("predict", "--predictor", edited, "--layers", good), "does not match the hash")


@pytest.mark.parametrize("edit", ["physical_list", "coef_short", "kind_unknown"])
def test_predict_refuses_a_resigned_malformed_model(made, edit):
    target = copy_predictor(made, f"resigned_{edit}")
    state = json.loads((target / "model.json").read_text())
    if edit == "physical_list":      # was AttributeError at load
        state["physical"] = []
    elif edit == "coef_short":       # was a shape error at predict time
        state["physical"]["conv/dense"] = [1.0]
    else:                            # was silently accepted
        state["kind"] = "zzz"
    (target / "model.json").write_text(json.dumps(state))
    rehash(target)
    assert_one_sentence(jcw("predict", "--predictor", target, "--layers", made["good"]), "model.json")


def test_predict_into_a_closed_pipe_is_quiet(made):
    many = made["root"] / "many.jsonl"
    many.write_text((json.dumps(GOOD) + "\n") * 5000)
    proc = subprocess.Popen([sys.executable, "-m", "jcw", "predict", "--predictor", str(made["predictor"]),
                             "--layers", str(many), "--json"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("{")
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err


# ---- search ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_module")
    (root / "uxmodels.py").write_text(
        "import torch\n"
        "def boom():\n    raise RuntimeError('my model\\nis broken')\n"
        "def net():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),\n"
        "                               torch.nn.Conv2d(8, 8, 3, padding=1))\n"
        "def acc_boom(model):\n    raise ValueError('accuracy failed')\n"
        "def acc_nan(model):\n    return float('nan')\n")
    (root / "uxsyntax.py").write_text("x = (\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}


@pytest.mark.parametrize("argv, words", [
    (["--model", "nosuch"], ("unknown model",)),
    (["--model", "digits", "--pop", "0"], ("--pop",)),
    (["--model", "digits", "--seed", "-1"], ("--seed",)),                  # was a numpy traceback after the search
    (["--model", "nosuchmod:fn", "--input-shape", "1,3,8,8"], ("nosuchmod",)),
    (["--model", "uxmodels:boom", "--input-shape", "1,3,8,8"], ("raised RuntimeError: my model is broken",)),
    (["--model", "uxsyntax:f", "--input-shape", "1,3,8,8"], ("SyntaxError",)),
    (["--model", "uxmodels:net", "--input-shape", "1,1,8,8"], ("does not run on an input",)),  # torch printed a trace
    (["--model", "uxmodels:net", "--input-shape", "1,3,8,8", "--accuracy", "uxmodels:acc_boom"],
     ("raised ValueError: accuracy failed",)),
    (["--model", "uxmodels:net", "--input-shape", "1,3,8,8", "--accuracy", "uxmodels:acc_nan"], ("finite",)),
])
def test_search_bad_arguments(made, user_module, argv, words):
    assert_one_sentence(jcw("search", "--predictor", made["predictor"], "--out", made["root"] / "run", "--pop", "4",
                            "--gens", "1", *argv, env=user_module), *words)


def test_search_bad_predictor_and_out(made):
    assert_one_sentence(jcw("search", "--predictor", made["profile"], "--model", "digits", "--out",
                            made["root"] / "run"), "is a profile")
    # checked before the search runs, not after it
    assert_one_sentence(jcw("search", "--predictor", made["predictor"], "--model", "digits", "--out", made["good"],
                            "--pop", "4", "--gens", "1"), "not a directory")


# ---- export ---------------------------------------------------------------------------------------------
def fake_run(made, name, front):
    run = made["root"] / name
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"model": "digits", "input_shape": [1, 1, 8, 8], "settings": {}}))
    (run / "front.json").write_text(json.dumps(front))
    return run


def test_export_bad_input(made):
    root = made["root"]
    pte = root / "m.pte"
    assert_one_sentence(jcw("export", "--run", root / "nope", "--pick", "1", "--out", pte), "not a search run")
    assert_one_sentence(jcw("export", "--run", root / "nope", "--pick", "0", "--out", pte), "--pick")
    # the output path is checked first, before minutes of rebuilding and exporting (was a traceback)
    assert_one_sentence(jcw("export", "--run", root / "nope", "--pick", "1", "--out", root / "no" / "dir" / "m.pte"),
                        "does not exist")
    assert_one_sentence(jcw("export", "--run", root / "nope", "--pick", "1", "--out", root), "is a directory")
    candidate = {"latency_ms": 2.0, "accuracy": 0.9, "genome": [0], "layers": [], "widths": [], "densities": []}
    no_genome = fake_run(made, "no_genome", [{k: v for k, v in candidate.items() if k != "genome"}])
    assert_one_sentence(jcw("export", "--run", no_genome, "--pick", "5", "--out", pte), "malformed candidate 0")


def test_export_of_a_user_function_run_needs_the_user_to_name_it(made, user_module):
    """A run directory may come from someone else: the function it names is imported only when confirmed."""
    run = fake_run(made, "user_fn_run", [{"latency_ms": 2.0, "accuracy": 0.9, "genome": [0], "layers": [],
                                          "widths": [], "densities": []}])
    (run / "run.json").write_text(json.dumps({"model": "uxmodels:boom", "input_shape": [1, 3, 8, 8],
                                              "settings": {}}))
    pte = made["root"] / "u.pte"
    assert_one_sentence(jcw("export", "--run", run, "--pick", "5", "--out", pte, env=user_module),
                        "confirm you trust it with --model uxmodels:boom")
    # named by the user, the function is imported (and here it raises: proof that it was called)
    assert_one_sentence(jcw("export", "--run", run, "--pick", "5", "--out", pte, "--model", "uxmodels:boom",
                            env=user_module), "raised RuntimeError")


# ---- emulate / demo ---------------------------------------------------------------------------------------
def test_emulate_and_demo_bad_input(made):
    binary = made["root"] / "binary.phone"
    binary.write_bytes(bytes(range(256)))
    assert_one_sentence(jcw("emulate", "--phone", binary, "--duration", "1", "--port", "0"), "not UTF-8")
    assert_one_sentence(jcw("emulate", "--authorized-keys", binary, "--auth", "listed", "--duration", "1",
                            "--port", "0"), "not UTF-8")
    assert_one_sentence(jcw("emulate", "--port", "99999"), "--port")
    assert_one_sentence(jcw("demo", "--pop", "2"), "--pop must be at least 4")  # was found only after profiling
    assert_one_sentence(jcw("demo", "--out", made["good"]), "not a directory")


# ---- Ctrl-C ----------------------------------------------------------------------------------------------
def test_ctrl_c_never_prints_a_traceback(made):
    for delay in (0.15, 0.6, 1.5):  # while importing the stages, loading the predictor, predicting
        proc = subprocess.Popen([sys.executable, "-m", "jcw", "predict", "--predictor", str(made["predictor"]),
                                 "--layers", str(made["good"])], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1]
        assert "Traceback" not in err, (delay, err)
        if proc.returncode != 0:  # it may have finished before the signal
            assert proc.returncode in (130, -signal.SIGINT) and len(err.strip().splitlines()) == 1, (delay, err)
            assert "interrupted" in err, err
