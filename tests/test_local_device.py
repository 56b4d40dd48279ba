"""LocalDevice: facts, the runner header, streaming results in order, and a runner that dies
mid-batch (RunnerCrashed after the results that did arrive)."""
from __future__ import annotations

import os
import signal
import time

import pytest

from jcw.android_harness.device import DeviceError, RunnerCrashed
from jcw.android_harness.local import LocalDevice
from jcw.android_harness.runner import host_binary

FAST = ["--warmup", "1", "--min-reps", "2", "--min-time-ms", "1"]


# With these flags a line stops after 2000 runs (or 3 s): a few ms for a tiny first line,
# about a second for the 28x28 lines after it, so a test can act while the batch is running.
SLOW_AFTER_FIRST = ["--warmup", "0", "--min-time-ms", "100000", "--max-reps", "2000", "--max-time-ms", "3000"]


def plan(n: int, **extra) -> list[dict]:
    return [{"id": f"L{i}", "op": "conv", "cin": 4 + i, "cout": 4, "k": 3, "h": 6, "w": 6,
             "impl": "dense", **extra} for i in range(n)]


def tiny_then_slow(n: int) -> list[dict]:
    first = {"id": "L0", "op": "conv", "cin": 2, "cout": 2, "k": 1, "h": 1, "w": 1, "impl": "dense"}
    return [first] + [{"id": f"L{i}", "op": "conv", "cin": 32, "cout": 32, "k": 3, "h": 28, "w": 28,
                       "impl": "dense"} for i in range(1, n)]


@pytest.fixture
def device() -> LocalDevice:
    try:
        host_binary()
    except DeviceError as exc:
        pytest.fail(str(exc))
    with LocalDevice() as dev:
        yield dev


def test_facts_and_runner_info(device: LocalDevice) -> None:
    facts = device.facts()
    assert facts["kind"] == "local" and facts["cpu_model"]
    assert facts["cores_online"] == len(facts["cores"]) >= 1
    info = device.runner_info()
    assert info["version"] and info["arch"] and info["xnnpack_initialized"] is True


def test_results_stream_in_order(device: LocalDevice) -> None:
    lines = plan(5)
    lines[2] = {"id": "bad", "op": "conv"}  # an error result still takes its place in order
    results = list(device.run_batch(lines, FAST))
    assert [r["id"] for r in results] == ["L0", "L1", "bad", "L3", "L4"]
    assert "error" in results[2] and all("us_median" in r for i, r in enumerate(results) if i != 2)
    assert device.last_header is not None and device.last_header["version"]


def test_results_arrive_before_the_batch_ends(device: LocalDevice) -> None:
    started = time.monotonic()
    batch = device.run_batch(tiny_then_slow(2), SLOW_AFTER_FIRST)
    first = next(batch)
    first_at = time.monotonic() - started
    rest = list(batch)
    total = time.monotonic() - started
    assert first["id"] == "L0" and [r["id"] for r in rest] == ["L1"]
    assert first_at < 0.5 * total, (first_at, total)


def test_killed_runner_raises_after_delivering_earlier_results(device: LocalDevice) -> None:
    batch = device.run_batch(tiny_then_slow(3), SLOW_AFTER_FIRST)
    received = []
    with pytest.raises(RunnerCrashed) as crash:
        for result in batch:
            received.append(result)
            os.kill(device.running_pid, signal.SIGKILL)
    assert [r["id"] for r in received] == ["L0"]
    assert "signal 9" in str(crash.value) and "1 of 3" in str(crash.value)
    assert device.running_pid is None


def test_closing_the_generator_kills_the_runner(device: LocalDevice) -> None:
    batch = device.run_batch(tiny_then_slow(3), SLOW_AFTER_FIRST)
    next(batch)
    pid = device.running_pid
    assert pid is not None
    batch.close()
    assert device.running_pid is None
    with pytest.raises(ProcessLookupError):  # reaped, not a zombie left running
        os.kill(pid, 0)


def test_default_threads_and_affinity_reach_the_runner() -> None:
    cpu = sorted(os.sched_getaffinity(0))[0]
    with LocalDevice(threads=2, affinity=[cpu]) as dev:
        (result,) = dev.run_batch(plan(1), FAST)
        assert result["threads"] == 2
        assert dev.facts()["runner_affinity"] == [cpu]
        (explicit,) = dev.run_batch(plan(1, threads=1), FAST)
        assert explicit["threads"] == 1


def test_bad_parameters_and_missing_binary(tmp_path) -> None:
    with pytest.raises(ValueError, match="threads"):
        LocalDevice(threads=0)
    with pytest.raises(ValueError, match="affinity"):
        LocalDevice(affinity=[10_000])
    dev = LocalDevice(binary=tmp_path / "convbench")
    with pytest.raises(DeviceError, match="make runner"):
        dev.runner_info()
    with pytest.raises(DeviceError, match="make runner"):
        list(dev.run_batch(plan(1)))
