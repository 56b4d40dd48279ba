"""The one table of layer-spec limits: what the layer spec (LayerSpec, LayerBatch) and the runner accept.

Owns the numbers only. `profiler.layerspec` validates against them, and the native build of
android_harness turns them into `spec_limits.h` (`python3 spec_limits.py > spec_limits.h`), so Python
and `convbench` cannot drift. Standard library only: the build runs this file with the host's python3.
"""
from __future__ import annotations

import sys

#: Largest channel count or spatial size. convbench computes buffer sizes in 64-bit integers and
#: refuses a layer over its memory cap anyway; the bound only keeps every product far from overflow.
MAX_DIM = 1_000_000
#: Largest kernel, stride or padding: far beyond any real network, small enough that k*k*cin fits.
MAX_WINDOW = 1024
MAX_THREADS = 256

#: field -> (smallest, largest) accepted value, both inclusive, for every integer field of a spec.
INT_LIMITS: dict[str, tuple[int, int]] = {
    "cin": (1, MAX_DIM),
    "cout": (1, MAX_DIM),
    "k": (1, MAX_WINDOW),
    "stride": (1, MAX_WINDOW),
    "pad": (0, MAX_WINDOW),
    "h": (1, MAX_DIM),
    "w": (1, MAX_DIM),
}
#: Threads of a plan line (not a layer spec field: the runner's own limit, shared for the CLI checks).
THREADS_LIMITS = (1, MAX_THREADS)


def c_header() -> str:
    """spec_limits.h: one #define per bound, SPEC_<FIELD>_MIN / SPEC_<FIELD>_MAX."""
    lines = ["/* Generated from profiler/spec_limits.py by android_harness/native/Makefile: do not edit. */",
             "#ifndef CONVBENCH_SPEC_LIMITS_H", "#define CONVBENCH_SPEC_LIMITS_H", ""]
    for name, (low, high) in {**INT_LIMITS, "threads": THREADS_LIMITS}.items():
        lines += [f"#define SPEC_{name.upper()}_MIN {low}", f"#define SPEC_{name.upper()}_MAX {high}"]
    return "\n".join(lines + ["", "#endif", ""])


if __name__ == "__main__":
    sys.stdout.write(c_header())
