"""Whole programs for the sparse runtime (`jcw profile --sparse-programs N`): zoo programs of the families
the sparse engine runs, at random widths and random per-layer weight densities drawn the way the search's
genome draws them (search/genome.py bounds, pymoo_parts.SpreadSampling), their seeded train/holdout plan, and
whether a device's program runner has the engine to time them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jcw.profiler import program_zoo
from jcw.profiler.programs import program_id, shapes, validate

RUNTIME = "sparse"
#: The zoo families every node of which the engine runs (the unseen families need concat, average pooling
#: or a standalone activation; profiler/engine_plan.py names what it runs).
ENGINE_FAMILIES = program_zoo.TRAIN_FAMILIES
SAMPLES = ("train", "holdout")
DENSITY_STEPS = program_zoo.WIDTH_STEPS  # 0.1 .. 1.0, the search's density choices
#: search.genome.Bounds: the lowest density of any layer, of the layer that reads the image and of a
#: strided layer (the classifier's bound does not apply: the engine runs linear layers dense).
MIN_DENSITY, FIRST_DENSITY, STRIDED_DENSITY = 0.1, 0.8, 0.2
#: pymoo_parts.SpreadSampling's per-gene noise around the individual's level, in units of the gene's range.
SPREAD_NOISE = 0.2
#: Share of programs at one density for every layer (noise 0): the uniform baselines users compare with.
UNIFORM_SHARE = 0.25
#: Training programs `jcw profile` times on the sparse engine when neither --sparse-programs nor --programs says
#: otherwise (it follows --programs: --programs 0 still means layers only). As many as the ExecuTorch default:
#: the engine's law has the same form plus four terms, and a program costs about what a .pte does — measured on
#: this x86 host at the default sizes, threads 1: export 0-2 s, one round 0.05-1 s (ResNet-50 at 224 the most),
#: so 40 + 13 held out take about 4 min and 1 GB of network files, under a tenth of the default profile.
DEFAULT_SPARSE_PROGRAMS = 40
#: Held-out programs per training program, and their floor (as for the executorch programs).
EVAL_SHARE, MIN_EVAL_PROGRAMS = 3, 10


def sparse_counts(n_train: int) -> tuple[int, int]:
    """(train, holdout) sparse programs for `--sparse-programs N`: N/3 held out, at least 10."""
    if n_train <= 0:
        return 0, 0
    return n_train, max(MIN_EVAL_PROGRAMS, n_train // EVAL_SHARE)


def density_range(spec: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """Per prunable layer (a groups-1 convolution: the layers the engine can run sparse), the lowest and
    highest index into DENSITY_STEPS the search's genome allows it; the lowest also keeps at least one
    weight after magnitude pruning (program_build prunes round((1 - d) * weights) of them)."""
    dims = shapes(spec)
    steps = np.array(DENSITY_STEPS)
    out = {}
    for node in spec["nodes"]:
        if node["op"] != "conv" or node["groups"] != 1:
            continue
        bound = MIN_DENSITY
        if node["inputs"] == ["input"]:
            bound = max(bound, FIRST_DENSITY)
        if node["stride"] > 1:
            bound = max(bound, STRIDED_DENSITY)
        weights = dims[node["inputs"][0]][0] * node["cout"] * node["k"] ** 2
        keeps = np.round((1.0 - steps) * weights) < weights
        allowed = np.nonzero((steps >= bound - 1e-9) & keeps)[0]
        out[node["name"]] = (int(allowed[0]), len(steps) - 1)
    return out


def random_densities(spec: Mapping[str, Any], rng: Any) -> dict[str, float]:
    """Per prunable layer a density: one level for the network, uniform in [0, 1] over each layer's allowed
    range, plus SPREAD_NOISE per layer (none for a UNIFORM_SHARE of draws), rounded to a step and clipped."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    ranges = density_range(spec)
    level = rng.random()
    noise = 0.0 if rng.random() < UNIFORM_SHARE else SPREAD_NOISE
    out = {}
    for name, (low, high) in ranges.items():
        index = low + (level + noise * rng.standard_normal()) * (high - low)
        out[name] = DENSITY_STEPS[int(np.clip(np.floor(index + 0.5), low, high))]
    return out


def with_densities(spec: Mapping[str, Any], densities: Mapping[str, float]) -> dict[str, Any]:
    """A validated copy of the spec with these layers' densities, named after its family, input size and id."""
    nodes = [{**node, "density": float(densities[node["name"]])} if node["name"] in densities else dict(node)
             for node in spec["nodes"]]
    out = validate({**spec, "nodes": nodes})
    out["name"] = f"{out['family']}-{out['input'][-1]}-sparse-{program_id(out)[:8]}"
    return out


def random_sparse_program(family: str, rng: np.random.Generator, resolution: int | None = None) -> dict[str, Any]:
    """A zoo program at a random genome (program_zoo.random_program) with random_densities."""
    spec = program_zoo.random_program(family, rng, resolution)
    return with_densities(spec, random_densities(spec, rng))


def sparse_plan(n_train: int, n_holdout: int, seed: int = 0,
                resolutions: Sequence[int] | None = None) -> list[tuple[dict[str, Any], str]]:
    """[(spec, sample)], sample "train" or "holdout" (other genomes of the same families, no program shared),
    interleaved so a session cut short has some of each. Each sample draws from its own stream, apart from
    program_zoo.program_plan's, so sparse programs never change the executorch plan, and asking for more
    later extends each sample without turning a held-out program into a training one."""
    for name, n in (("n_train", n_train), ("n_holdout", n_holdout)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise program_zoo.ProgramZooError(f"{name} must be a non-negative integer, got {n!r}")
    taken: set[str] = set()
    drawn = {}
    for sample, n in (("holdout", n_holdout), ("train", n_train)):
        rng = np.random.default_rng([int(seed), 10, SAMPLES.index(sample)])
        drawn[sample] = program_zoo.draw(ENGINE_FAMILIES, n, rng, taken, resolutions=resolutions,
                                         make=random_sparse_program)
    return program_zoo.interleave(drawn, SAMPLES)


def runtimes_to_measure(address: str, header: dict[str, Any] | None, programs: int,
                        sparse: int) -> tuple[tuple[str, ...], str | None]:
    """(the runtimes whose programs this run measures, one sentence when the sparse ones are skipped because
    the device's program runner has no sparse network engine, as a bundle from before it has not)."""
    if header is None:
        return (), None
    runtimes, note = ["executorch"] if programs else [], None
    if sparse:
        from jcw.profiler.netfile import VERSION as NET_VERSION
        if header.get("net_format_version") == NET_VERSION:
            runtimes.append(RUNTIME)
        else:
            note = (f"the program runner on {address} (ptebench {header.get('version')}) has no sparse network "
                    f"engine for network files of version {NET_VERSION}, so the sparse-engine programs were skipped; "
                    f"the runner bundle of this jcw (`make runner-android`) has it")
    return tuple(runtimes), note
