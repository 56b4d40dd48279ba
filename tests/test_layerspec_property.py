"""One set of rules for a layer spec: `LayerSpec`, `LayerBatch` and the real `convbench` host binary accept
and refuse the same specs (Hypothesis draws specs around every limit of profiler/spec_limits.py,
with wrong types, nulls and missing fields; each example is one plan of many lines, one runner start)."""
from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jcw.android_harness.runner import HOST_BINARY
from jcw.profiler.layerspec import LayerBatch, LayerSpec, LayerSpecError
from jcw.profiler.spec_limits import INT_LIMITS

#: Errors convbench writes only after a line passed its spec checks (bench.c): the spec was accepted,
#: the layer then did not fit the --max-mb cap used here, or XNNPACK declined it.
RAN_PAST_THE_CHECKS = ("layer needs about", "layer has more than 2^31", "XNNPACK (", "could not allocate",
                       "output ")


def _around(low: int, high: int) -> st.SearchStrategy:
    """Integers that matter for [low, high]: both edges and one step past them, small values, and
    the same numbers as JSON floats; plus what is not an integer at all."""
    edges = [low - 1, low, low + 1, high - 1, high, high + 1, 2000, 2**31, 2**63]
    integers = st.one_of(st.sampled_from(edges), st.integers(min_value=low - 2, max_value=min(high, 9)))
    return st.one_of(
        integers, integers, integers,
        integers.map(float),
        st.sampled_from([2.5, -0.5, math.inf, -math.inf, math.nan, True, False, "3", None, [3]]),
    )


DENSITIES = st.one_of(st.floats(min_value=-0.25, max_value=1.25, allow_nan=False),
                      st.sampled_from([0, 1, 0.0, 1.0, 1e-300, 1.0000000001, math.nan, math.inf, True, "0.5", None]))
OPS = st.sampled_from(["conv", "conv", "dwconv", "dwconv", "deconv", "", None, 1])


@st.composite
def spec_objects(draw) -> dict:
    """A JSON object that may or may not be a valid layer spec: a small valid layer, then up to two
    fields pushed to (or past) a limit or given a wrong type, and sometimes a field left out."""
    op = draw(st.sampled_from(["conv", "dwconv"]))
    cin, k = draw(st.integers(1, 16)), draw(st.integers(1, 7))
    spec = {"op": op, "cin": cin, "cout": cin if op == "dwconv" else draw(st.integers(1, 16)), "k": k,
            "h": draw(st.integers(k, 16)), "w": draw(st.integers(k, 16)), "stride": draw(st.integers(1, 3)),
            "pad": draw(st.one_of(st.none(), st.integers(0, 3))),
            "density": draw(st.floats(min_value=0.01, max_value=1.0))}
    for name in draw(st.lists(st.sampled_from(("op", "density", *INT_LIMITS)), max_size=2, unique=True)):
        spec[name] = draw(OPS if name == "op" else DENSITIES if name == "density" else _around(*INT_LIMITS[name]))
        if name == "k" and draw(st.booleans()):  # let a big kernel fit: test its own limit, not the input's
            spec["h"] = spec["w"] = draw(st.sampled_from([1024, 2048, 10**6]))
        if name == "cin" and spec["op"] == "dwconv" and draw(st.booleans()):
            spec["cout"] = spec["cin"]
    if draw(st.integers(0, 5)) == 0:
        del spec[draw(st.sampled_from(sorted(spec)))]
    return spec


def python_accepts(spec: dict) -> bool:
    try:
        LayerSpec.from_dict(spec)
    except LayerSpecError:
        return False
    return True


def batch_accepts(spec: dict) -> bool:
    try:
        LayerBatch.from_rows([spec])
    except LayerSpecError:
        return False
    return True


def runner_accepts(specs: list[dict]) -> list[bool]:
    """Run the real host convbench on one plan; a line counts as accepted when it ran or failed only
    after the spec checks (a 1 MB cap and one timed run keep accepted lines cheap)."""
    lines = [json.dumps({**spec, "id": str(i), "impl": "dense", "threads": 1}) for i, spec in enumerate(specs)]
    done = subprocess.run([str(HOST_BINARY), "--max-mb", "1", "--warmup", "0", "--min-reps", "1", "--max-reps", "1",
                           "--min-time-ms", "0", "--check-samples", "1"],
                          input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()[1:]]
    # A line that is not JSON to the runner (NaN, Infinity) has no readable id: one result per line still.
    assert len(results) == len(specs) and all(r["id"] in (str(i), None) for i, r in enumerate(results))
    return ["error" not in r or r["error"].startswith(RAN_PAST_THE_CHECKS) for r in results]


@pytest.fixture(scope="module", autouse=True)
def _host_runner():
    if not HOST_BINARY.exists():
        pytest.fail(f"the host runner {HOST_BINARY} is not built; run `make -C android_harness/native host`")


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(spec_objects(), min_size=10, max_size=60))
@example([{"op": "conv", "cin": 4, "cout": 4, "k": 2000, "h": 3000, "w": 3000}])  # issue 12: k = 2000
@example([{"op": "dwconv", "cin": 8, "cout": 8, "k": 3, "h": 8, "w": 8, "stride": None, "pad": None,
           "density": None}])
def test_layerspec_layerbatch_and_convbench_accept_the_same_specs(specs):
    by_python = [python_accepts(spec) for spec in specs]
    by_batch = [batch_accepts(spec) for spec in specs]
    by_runner = runner_accepts(specs)
    for spec, python, batch, runner in zip(specs, by_python, by_batch, by_runner):
        assert python == batch == runner, f"LayerSpec {python}, LayerBatch {batch}, convbench {runner}: {spec}"
    # The whole batch at once: refused exactly when a layer is bad, and the same layers when not.
    accepted = [spec for spec, ok in zip(specs, by_python) if ok]
    if accepted:
        batch = LayerBatch.from_rows(accepted)
        assert batch.to_specs() == [LayerSpec.from_dict(spec) for spec in accepted]
        assert batch.layer_keys() == [LayerSpec.from_dict(spec).key() for spec in accepted]
    if not all(by_python):
        with pytest.raises(LayerSpecError):
            LayerBatch.from_rows(specs)


def test_the_limits_are_the_runners():
    """The header convbench is built with holds the table Python checks against."""
    from jcw.android_harness.runner import NATIVE_DIR
    header = (NATIVE_DIR / "build" / "include" / "spec_limits.h").read_text()
    for name, (low, high) in INT_LIMITS.items():
        assert f"#define SPEC_{name.upper()}_MIN {low}\n" in header
        assert f"#define SPEC_{name.upper()}_MAX {high}\n" in header
    with pytest.raises(LayerSpecError, match="'k' must be <= 1024, got 2000"):
        LayerSpec(op="conv", cin=4, cout=4, k=2000, h=3000, w=3000)
    with pytest.raises(LayerSpecError, match=r"'k' must be <= 1024, got 2000 \(layer 1\)"):
        LayerBatch.from_arrays(op=["conv", "conv"], cin=[4, 4], cout=[4, 4], k=np.array([3, 2000]), h=[3000, 3000],
                               w=[3000, 3000])
