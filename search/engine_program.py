"""A program template as the kit's sparse network engine runs it, vectorised over a population: which
convolutions run sparse (groups-1 ones at density < 1), the engine's layout plan (profiler.engine_plan) and
the per-layer arrays predictor.sparse_runtime.engine_parts takes. Owns the refusal of a model the engine
cannot run, in one sentence naming the operation.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from jcw.profiler import engine_plan

from .errors import SearchError

#: layout_plan tells a depthwise convolution by groups > 1; its real group count is a channel form, and
#: any value above 1 marks it (with one channel its input is layout-free, so the plan is the same).
_DEPTHWISE_GROUPS = 2


class EngineProgram:
    """The engine's view of one ProgramTemplate: `plan(channels, densities)` per population."""

    def __init__(self, template) -> None:
        if template.unmodelled:
            first = template.unmodelled[0]
            raise SearchError(f"the sparse engine cannot run the model's {first['op']} ({first['name']})")
        full = np.array([g.channels for g in template.graph.groups], dtype=np.int64)
        try:
            engine_plan.check_runnable(template.spec(full))
        except engine_plan.EnginePlanError as exc:
            raise SearchError(str(exc)) from None
        self.template = template
        self.n_layers = len(template.graph.layers)
        self.nodes = []
        self.layer_nodes: list[tuple[int, dict[str, Any]]] = []   # (layer index, engine node) of weighted layers
        for node in template.nodes:
            engine_node = {k: v for k, v in node.items() if not k.startswith("_")}
            if "_groups" in node:
                engine_node["groups"] = _DEPTHWISE_GROUPS
            self.nodes.append(engine_node)
            if "_layer" in node:
                self.layer_nodes.append((node["_layer"], engine_node))
        self.is_conv = np.array([not layer.is_linear for layer in template.graph.layers])
        input_channels = int(template.value_channels(full[None, :])[0, 0])
        self.cluster = engine_plan.xnnpack_cluster(self.nodes, input_channels)

    def plan(self, channels: np.ndarray, densities: np.ndarray, xnnpack_sparse_inference: bool = False
             ) -> dict[str, Any]:
        """For n genomes ((n, groups) kept channels, (n, layers) densities): "runs_sparse" and "nchw_depthwise"
        ((n, layers) bool, per weighted layer in the search's order), "layout" (engine_plan.layout_plan's
        conversions, conversion_elems and nchw_depthwise) and "xnnpack" ((n,) whether the engine runs the
        network inside XNNPACK's own sparse inference: only where the device's XNNPACK rewrites,
        `xnnpack_sparse_inference`)."""
        values = self.template.value_channels(channels)                  # (n, values)
        hw = self.template.value_hw
        elements = (values * hw).astype(np.float64)
        free = (values == 1) | (hw == 1)
        names = self.template.value_names
        densities = np.atleast_2d(densities)
        n = values.shape[0]
        runs_sparse = np.zeros((n, self.n_layers), dtype=bool)
        sparse = {}
        for layer, node in self.layer_nodes:
            runs_sparse[:, layer] = engine_plan.runs_sparse(node, densities[:, layer])
            if node["op"] == "conv":
                sparse[node["name"]] = runs_sparse[:, layer]
        layout = engine_plan.layout_plan(self.nodes, dict(zip(names, elements.T)), dict(zip(names, free.T)),
                                         sparse, n)
        rewritten = np.zeros(n, dtype=bool)
        if xnnpack_sparse_inference and self.cluster is not None:
            rewritten = self._rewritten(values, densities) & runs_sparse.any(axis=1)
            engine_plan.apply_xnnpack(layout, sparse, self.cluster, rewritten, elements[:, 0])
            for layer, node in self.layer_nodes:
                if node["name"] in self.cluster["pointwise"] or node["name"] == self.cluster["stem"]:
                    runs_sparse[:, layer] = sparse[node["name"]]
        nchw = np.zeros((n, self.n_layers), dtype=bool)
        for layer, node in self.layer_nodes:
            if node["name"] in layout["nchw_depthwise"]:
                nchw[:, layer] = layout["nchw_depthwise"][node["name"]]
        return {"runs_sparse": runs_sparse, "nchw_depthwise": nchw, "layout": layout, "xnnpack": rewritten}

    def _rewritten(self, values: np.ndarray, densities: np.ndarray) -> np.ndarray:
        """(n,) whether the cluster's 1x1 weights are zero enough for XNNPACK to rewrite it."""
        column = {name: i for i, name in enumerate(self.template.value_names)}
        layer_of = {node["name"]: layer for layer, node in self.layer_nodes}
        by_name = {node["name"]: node for node in self.nodes}
        pointwise = self.cluster["pointwise"]
        weights = np.column_stack([values[:, column[name]] * values[:, column[by_name[name]["inputs"][0]]]
                                   for name in pointwise]) if pointwise else np.zeros((len(values), 0))
        kept = np.column_stack([densities[:, layer_of[name]] for name in pointwise]) if pointwise else weights
        return engine_plan.xnnpack_rewrites(weights, kept)
