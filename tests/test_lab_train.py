"""`jcw lab train`: one predictor per phone profile of a lab, trained in parallel processes; a profile that
cannot be trained is reported in one sentence while the others are trained; no profile at all is bad input."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jcw.predictor.persistence import load
from predictor_profile import small_profile  # noqa: F401  (a session fixture)

ROOT = Path(__file__).resolve().parent.parent


def run_jcw(*argv):
    return subprocess.run([sys.executable, "-m", "jcw", *map(str, argv)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_a_directory_without_profiles_is_one_sentence(tmp_path):
    (tmp_path / "empty").mkdir()
    done = run_jcw("lab", "train", "--profiles", tmp_path / "empty", "--out", tmp_path / "preds")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"jcw lab: --profiles {tmp_path / 'empty'} holds no profile (no */profile.sqlite)")


@pytest.mark.slow
def test_each_phone_gets_its_own_predictor_and_a_bad_profile_does_not_stop_the_others(small_profile, tmp_path):
    lab = tmp_path / "lab"
    for name in ("Pixel-7-AAA1", "Galaxy-S23-BBB2"):
        shutil.copytree(small_profile, lab / name, ignore=shutil.ignore_patterns("profile.lock"))
    (lab / "Broken-CCC3").mkdir()
    (lab / "Broken-CCC3" / "profile.sqlite").write_bytes(b"not a database at all" * 100)
    done = run_jcw("lab", "train", "--profiles", lab, "--out", tmp_path / "preds", "--jobs", "2")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("jcw lab train:")]
    assert "Broken-CCC3" in line and line.endswith("the other phones' predictors were trained.")
    for name in ("Pixel-7-AAA1", "Galaxy-S23-BBB2"):
        assert load(tmp_path / "preds" / name) is not None
        assert name in done.stdout
    assert not (tmp_path / "preds" / "Broken-CCC3" / "jcw.predictor.json").exists()
