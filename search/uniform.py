"""Uniform pruning baselines without a search (`jcw export --model M --uniform width=W,density=D`): a zoo
model with every free channel group at width W and density D on every groups == 1 convolution except the
stem, pruned by the search's own genome and magnitude pruning, then exported like a searched candidate.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import torch

from jcw.profiler.cliargs import OutputPathError, check_output_file, os_error_reason, short_path

from .errors import SearchError
from .export import export_pte, measure, measure_network, network_report, output_paths, run_pte, write_network_file
from .genome import Bounds, SearchSpace
from .graph import read_model
from .netexport import pruned_conv_layers
from .prune import apply_genome, check_against_specs, make_permanent
from .zoo import ZOO, build, canonical_name

#: A convolution reading this few channels reads the image: the stem stays dense, as the search's bounds keep it.
STEM_CHANNELS = 3


def parse_uniform(text: str) -> tuple[float, float]:
    """"width=W,density=D" (either may be left out: 1) -> (W, D), each checked to lie in (0, 1]."""
    values = {"width": 1.0, "density": 1.0}
    for item in str(text).split(","):
        name, sep, number = item.strip().partition("=")
        if name not in values or not sep:
            raise SearchError(f"--uniform must look like width=W,density=D, got {text!r}")
        try:
            value = float(number)
        except ValueError:
            value = math.nan
        if not 0.0 < value <= 1.0:
            raise SearchError(f"--uniform {name} must be a number in (0, 1], got {number!r}")
        values[name] = value
    return values["width"], values["density"]


def uniform_candidate(model: torch.nn.Module, example: torch.Tensor, width: float, density: float,
                      name: str) -> tuple[SearchSpace, np.ndarray]:
    """The search space of `model` with exactly the choices W and D (and 1), and the uniform genome in it."""
    graph = read_model(model, example)
    bounds = Bounds(min_width=width, first_width=width, strided_width=width, residual_width=width,
                    min_density=density, first_density=density, last_density=density, strided_density=density)
    space = SearchSpace(graph, sorted({width, 1.0}), sorted({density, 1.0}), bounds, name=name)
    kept, full = list(space.density_choices).index(density), len(space.density_choices) - 1
    # the stem and the classifier keep every weight; every other groups == 1 convolution gets density D
    densities = [kept if not graph.layers[i].is_linear and graph.layers[i].spec.cin > STEM_CHANNELS else full
                 for i in space.density_layers]
    x = np.array([list(space.width_choices).index(width)] * space.n_width + densities, dtype=np.int64)
    return space, space.check(x)[0]


def export_uniform(model_name: str, width: float, density: float, runtime: str, out: str | Path,
                   device: str | None = None, threads: int | None = None, rounds: int = 1, reps: int = 20,
                   say=lambda text: None) -> dict:
    """Write <out>.pte (and under runtime sparse <out>.jcwnet) of the uniformly pruned zoo model; measure
    them when `device` is given. Returns the report (also written to <out>.export.json)."""
    model_name = canonical_name(model_name)
    if model_name not in ZOO:
        raise SearchError(f"--uniform needs a zoo model ({', '.join(ZOO)}), got --model {model_name!r}")
    if runtime not in ("executorch", "sparse"):
        raise SearchError(f"--runtime must be executorch or sparse, got {runtime!r}")
    try:  # before the export: where the files go must be writable
        check_output_file(Path(out), "--out")
    except OutputPathError as exc:
        raise SearchError(str(exc)) from None
    pte_path, net_path = output_paths(out, runtime)
    model, shape = build(model_name)
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    say("pruning the model uniformly")
    space, x = uniform_candidate(model, example, width, density, model_name)
    pruned = apply_genome(model, space, x).eval()
    check_against_specs(pruned, example, space.layer_specs(x))
    dense = make_permanent(copy.deepcopy(pruned))
    with torch.no_grad():
        reference = dense(example)
    say("exporting to ExecuTorch")
    export_pte(dense, example, pte_path)
    err = float((run_pte(pte_path, example, reps=1, warmup=0)["output"] - reference).abs().max())
    network = None
    if net_path is not None:
        say("writing the sparse engine's network file")
        network = write_network_file(dense, example, net_path, model_name, pruned_conv_layers(space, x))
    specs = space.layer_specs(x)
    report = {"model": model_name, "uniform": {"width": width, "density": density}, "export_runtime": runtime,
              "pte": str(pte_path), "max_abs_err": err, "n_layers": len(specs),
              "weight_pruned_layers": [layer.name for layer, spec in zip(space.graph.layers, specs)
                                       if spec.density < 1.0],
              "device": device, "measured_ms": None, **network_report(network, net_path, None, None)}
    if device is not None:
        say(f"measuring on {device}")
        from jcw.profiler.program_session import DeviceError  # the harness's error type, as the profiler raises it
        try:
            result = measure([pte_path], device, threads, rounds, reps, example)[0]
        except (DeviceError, ValueError) as exc:
            raise SearchError(f"the .pte could not be measured on {device} ({str(exc).rstrip('.')}); "
                              f"{pte_path} is written and stays") from None
        report.update(measured_ms=result["latency_ms"], threads=result.get("threads"), device=result.get("device"),
                      measured_median_ms=None if result.get("us_median") is None else result["us_median"] / 1e3)
        if network is not None:
            report.update(network_report(network, net_path, *measure_network(net_path, device, threads, rounds)))
    report_path = pte_path.with_suffix("").with_name(pte_path.with_suffix("").name + ".export.json")
    try:
        report_path.write_text(json.dumps(report, indent=1))
    except OSError as exc:
        raise SearchError(f"cannot write {short_path(report_path)}: {os_error_reason(exc)}; the exported "
                          f"files are written") from None
    return report

