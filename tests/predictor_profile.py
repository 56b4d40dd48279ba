"""A small real profile measured once per test session with the host runner (fast runner flags),
shared by the predictor test files; `jcw profile` resumes, so a second request costs nothing."""
import os

import pytest

FAST = ["--warmup", "1", "--min-reps", "3", "--min-time-ms", "1", "--check-samples", "4"]
BUDGET = 80


@pytest.fixture(scope="session")
def small_profile(tmp_path_factory):
    from jcw.android_harness.local import LocalDevice
    from jcw.android_harness.runner import HOST_BINARY
    from jcw.profiler import session

    if not os.access(HOST_BINARY, os.X_OK):
        pytest.fail(f"the host runner {HOST_BINARY} is not built; run `make -C android_harness/native host`")
    directory = tmp_path_factory.getbasetemp() / "predictor-small-profile"
    with LocalDevice() as device:
        session.profile(device, directory, budget=BUDGET, seed=11, rounds=2, runner_args=FAST)
    return directory


@pytest.fixture(scope="session")
def small_rows(small_profile):
    from jcw.profiler.store import ProfileStore

    with ProfileStore(small_profile) as store:
        rows = store.measurements()
    return [r for r in rows if r["sample"] not in ("holdout", "unseen")], [r for r in rows if r["sample"] == "holdout"]


@pytest.fixture(scope="session")
def trained_predictor(small_profile, tmp_path_factory):
    """`jcw train` run once on the small profile: (predictor directory, exit status, printed text)."""
    import contextlib
    import io

    from jcw.__main__ import main

    out_dir = tmp_path_factory.getbasetemp() / "predictor-small"
    # Each test module imports this fixture, so it runs once per module: the first run's result is kept.
    transcript = out_dir.with_name("predictor-small-train.txt")
    if transcript.exists():
        status, _, text = transcript.read_text().partition("\n")
        return out_dir, int(status), text
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["train", "--profile", str(small_profile), "--out", str(out_dir)])
    transcript.write_text(f"{status}\n{printed.getvalue()}")
    return out_dir, status, printed.getvalue()
