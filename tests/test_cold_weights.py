"""Cold-weight timing: convbench --weights cold rotates over copies of a layer larger than the last-level cache
(or over --cold-bytes) and checks their outputs as warm timing does; `jcw profile --weights` (and `--cold-bytes`)
records the mode, refuses to mix modes or rotations, and `jcw train` carries it (with the settle record) into the
predictor's card."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from jcw import predictor
from jcw.__main__ import main
from jcw.android_harness.local import LocalDevice
from jcw.predictor import pipeline
from jcw.predictor.persistence import COMPATIBLE_RUNNERS, runner_series
from jcw.profiler import labels, session
from jcw.profiler.store import ProfileStore
from test_program_pipeline import build_profile
from test_runner import FAST, TORCH_CASES, layer, read_f32, run

#: Mirrors COLD_MAX_COPIES in android_harness/native/cold.h.
COLD_MAX_COPIES = 4096
PROFILE_FAST = ["--warmup", "0", "--min-reps", "2", "--min-time-ms", "0", "--check-samples", "4"]
#: One case of each kind the runner builds differently: dense k3, dense 1x1, depthwise, sparse SpMM with and
#: without im2col, and two threads.
CASES = [c for c in TORCH_CASES if c["id"] in ("dense_k3", "dense_k1_wide", "dw_k3_wide", "sparse_k1_wide",
                                               "sparse_k3_s2", "dense_k3_threads2")]


@pytest.fixture(scope="module")
def binary() -> Path:
    from jcw.android_harness import runner
    try:
        return runner.host_binary()
    except runner.DeviceError as exc:
        pytest.fail(str(exc))


def test_cold_lines_rotate_past_the_cache_and_agree_with_torch(binary, tmp_path):
    header, results = run(binary, CASES, FAST + ["--weights", "cold", "--dump", str(tmp_path)])
    info = header["runner"]
    assert info["weights"] == "cold" and info["cache_bytes"] > 0 and info["cache_source"] in (
        "cpuinfo", "sysfs", "fallback")
    # --cold-bytes came with 0.2.3; the series is one jcw trains on
    assert tuple(map(int, info["version"].split("."))) >= (0, 2, 3)
    assert runner_series(info["version"]) in COMPATIBLE_RUNNERS
    for case, result in zip(CASES, results):
        assert "error" not in result, result
        assert result["weights"] == "cold" and 2 <= result["cold_copies"] <= COLD_MAX_COPIES
        # the copies other than the one timed hold more than the cache, unless the copy count was capped
        assert result["cold_bytes"] > info["cache_bytes"] or result["cold_copies"] == COLD_MAX_COPIES, result
        cin, cout, k, h, w = (case[key] for key in ("cin", "cout", "k", "h", "w"))
        groups = cin if case["op"] == "dwconv" else 1
        pad = case.get("pad", k // 2)
        x = read_f32(tmp_path / f"{case['id']}.input.f32", (1, cin, h, w))
        weights = read_f32(tmp_path / f"{case['id']}.weights.f32", (cout, cin // groups, k, k))
        expected = F.conv2d(x, weights, stride=case["stride"], padding=pad, groups=groups)
        got = read_f32(tmp_path / f"{case['id']}.output.f32", tuple(expected.shape))
        scale = F.conv2d(x.abs(), weights.abs(), stride=case["stride"], padding=pad, groups=groups)
        assert torch.all((got - expected).abs() <= 1e-5 * scale + 1e-7), case["id"]
    warm_header, warm = run(binary, CASES[:1], FAST)
    assert warm_header["runner"]["weights"] == "warm" and warm[0]["weights"] == "warm" and "cold_copies" not in warm[0]


def test_cold_lines_are_checked_against_the_reference_like_warm_ones(binary):
    line = layer("checked", cin=32, cout=24, k=3, stride=2, h=17, w=16)
    for mode in ("warm", "cold"):
        _, (result,) = run(binary, [line], FAST + ["--weights", mode, "--tolerance", "0"])
        assert "output differs from the reference convolution" in result["error"], (mode, result)
    # about 20 MB timed warm; cold, at least two copies of its 3 MB output and 2.4 MB of weights come on top
    big = layer("big", cin=256, cout=256, k=3, h=56, w=56)
    _, (fits,) = run(binary, [big], FAST + ["--max-mb", "24"])
    _, (refused,) = run(binary, [big], FAST + ["--weights", "cold", "--max-mb", "24"])
    assert "error" not in fits and "with cold weights" in refused["error"] and "--max-mb" in refused["error"]
    bad = subprocess.run([str(binary), "--weights", "tepid"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--weights needs warm or cold" in bad.stderr


def test_cold_bytes_sizes_the_rotation(binary):
    cases = CASES[:2]
    header, default = run(binary, cases, FAST + ["--weights", "cold"])
    small_header, small = run(binary, cases, FAST + ["--weights", "cold", "--cold-bytes", "256K"])
    info = small_header["runner"]
    assert info["cache_bytes"] == 256 * 1024 and info["cache_source"] == "--cold-bytes"
    for line, big in zip(small, default):
        assert "error" not in line, line
        # the other copies still exceed the rotation asked for, and there are fewer of them than past the cache
        assert line["cold_bytes"] > 256 * 1024 or line["cold_copies"] == COLD_MAX_COPIES, line
        if header["runner"]["cache_bytes"] > 512 * 1024:
            assert line["cold_copies"] < big["cold_copies"], (line, big)
    for value in ("12", "4Q", "-1M"):
        bad = subprocess.run([str(binary), "--weights", "cold", "--cold-bytes", value], capture_output=True,
                             text=True, timeout=30)
        assert bad.returncode == 2 and "--cold-bytes needs a size of at least 1K" in bad.stderr, value


def test_profile_records_the_mode_and_refuses_to_mix(tmp_path, capsys):
    device = LocalDevice()
    summary = session.profile(device, tmp_path / "p", budget=2, holdout=0, rounds=1, runner_args=PROFILE_FAST,
                              weights="cold")
    assert summary.weights == "cold" and summary.failures == 0 and summary.measured > 0
    assert device.last_header["weights"] == "cold"  # the batches really ran cold
    with ProfileStore(tmp_path / "p") as store:
        assert store.get_meta("weights") == "cold" and labels.describe(store)["weights"] == "cold"
    with pytest.raises(labels.LabelModeError, match="measured with --weights cold and one profile never mixes"):
        session.profile(device, tmp_path / "p", budget=2, holdout=0, rounds=1, runner_args=PROFILE_FAST)
    argv = ["profile", "--device", "local", "--out", str(tmp_path / "p"), "--budget", "2", "--holdout", "0",
            "--rounds", "1", "--programs", "0"]
    assert main(argv + ["--weights", "warm"]) == 2
    err = capsys.readouterr().err
    assert "rerun with --weights cold to resume" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert main(argv + ["--weights", "cold", "--runner-arg=--weights=warm"]) == 2
    err = capsys.readouterr().err
    assert "not as runner arguments" in err and len(err.strip().splitlines()) == 1
    with ProfileStore(tmp_path / "p") as store:  # the refusals measured nothing
        assert len(store.rounds()) == summary.measured


def test_profile_records_the_rotation_and_refuses_another(tmp_path, capsys):
    device = LocalDevice()
    summary = session.profile(device, tmp_path / "p", budget=2, holdout=0, rounds=1, runner_args=PROFILE_FAST,
                              weights="cold", cold_bytes=1 << 20)
    assert summary.cold_bytes == 1 << 20 and summary.failures == 0 and summary.measured > 0
    assert device.last_header["cache_bytes"] == 1 << 20 and device.last_header["cache_source"] == "--cold-bytes"
    with ProfileStore(tmp_path / "p") as store:
        assert store.get_meta("cold_bytes") == 1 << 20 and labels.describe(store)["cold_bytes"] == 1 << 20
    with pytest.raises(labels.LabelModeError, match="rotating over 1 MiB and one profile never mixes rotations; "
                                                    "rerun --cold-bytes 1048576"):
        session.profile(device, tmp_path / "p", budget=2, holdout=0, rounds=1, runner_args=PROFILE_FAST,
                        weights="cold")
    argv = ["profile", "--device", "local", "--budget", "2", "--holdout", "0", "--rounds", "1", "--programs", "0"]
    for extra, said in ((["--out", str(tmp_path / "p"), "--weights", "cold", "--cold-bytes", "2M"],
                         "never mixes rotations"),
                        (["--out", str(tmp_path / "q"), "--cold-bytes", "4M"], "it needs --weights cold"),
                        (["--out", str(tmp_path / "q"), "--weights", "cold", "--runner-arg=--cold-bytes=4M"],
                         "not as runner arguments")):
        assert main(argv + extra) == 2
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, extra
    with pytest.raises(SystemExit) as exited:  # argparse's own sentence
        main(argv + ["--out", str(tmp_path / "q"), "--weights", "cold", "--cold-bytes", "12"])
    assert exited.value.code == 2 and "expected a size from 1K to 1024G such as 4M, got '12'" in capsys.readouterr().err
    with ProfileStore(tmp_path / "p") as store:  # the refusals measured nothing
        assert len(store.rounds()) == summary.measured
    assert not (tmp_path / "q" / "profile.sqlite").exists()


def test_the_mode_and_the_settle_record_round_trip_to_the_card(tmp_path):
    cold = build_profile(tmp_path / "cold", with_programs=False)
    with ProfileStore(cold) as store:
        store.set_meta("weights", "cold")
        store.set_meta("cold_bytes", 4 << 20)
        store.set_meta("settle", {"cap": 3, "tolerance": 0.05, "statistic": "us_min", "aggregate": "min",
                                  "base_rounds": 2, "disagreeing_base": 4, "settled_configurations": 4,
                                  "extra_rounds": 6, "still_disagreeing": 1})
    result = pipeline.train(cold, tmp_path / "pred-cold", model="linear")
    loaded = predictor.load(tmp_path / "pred-cold").card["labels"]
    assert loaded == result["card"]["labels"]
    assert loaded["weights"] == "cold" and loaded["statistic"] == "us_min"
    assert loaded["settle"]["still_disagreeing"] == 1
    assert loaded["cold_bytes"] == 4 << 20
    assert "cold weights (rotating over 4 MiB), settle rounds up to 3" in labels.sentence(loaded)
    # a profile from before both existed: its layers were timed warm, and settling is not recorded
    old = build_profile(tmp_path / "old", with_programs=False)
    pipeline.train(old, tmp_path / "pred-old", model="linear")
    card = json.loads((tmp_path / "pred-old" / "card.json").read_text())
    assert card["labels"] == {"statistic": "us_min", "aggregate": "min", "weights": "warm", "cold_bytes": None,
                              "settle": None}


def test_measure_layers_says_and_uses_the_weights_mode(tmp_path, capsys):
    layers = tmp_path / "layers.jsonl"
    layers.write_text(json.dumps({"id": "a", "op": "conv", "cin": 16, "cout": 32, "k": 1, "h": 7, "w": 7}) + "\n")
    fast = [f"--runner-arg={flag}={value}" for flag, value in zip(PROFILE_FAST[::2], PROFILE_FAST[1::2])]
    modes = {}
    for weights in ("cold", None):
        argv = ["measure", "--device", "local", "--layers", str(layers), "--impl", "dense", "--json", *fast]
        assert main(argv + (["--weights", weights] if weights else [])) == 0
        (line,) = capsys.readouterr().out.strip().splitlines()
        modes[weights] = json.loads(line)
    assert modes["cold"]["weights"] == "cold" and modes["cold"]["cold_copies"] > 1
    assert modes[None]["weights"] == "warm"
    assert main(["measure", "--device", "local", "--layers", str(layers), "--impl", "dense", *fast]) == 0
    assert "warm weights" in capsys.readouterr().out
    argv = ["measure", "--device", "local", "--layers", str(layers), "--impl", "dense", "--weights", "cold", *fast]
    assert main(argv + ["--cold-bytes", "256K", "--json"]) == 0
    small = json.loads(capsys.readouterr().out)
    assert small["cold_bytes"] > 256 * 1024 and small["cold_copies"] <= modes["cold"]["cold_copies"]

    status = main(["measure", "--device", "local", "--pte", str(tmp_path / "m.pte"), "--weights", "cold"])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("jcw measure: --weights and --cold-bytes are how layers are timed")
    assert err.count("\n") == 1
