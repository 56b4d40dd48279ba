"""The anchors ours is compared against, on the same data: MACs-proportional, nn-Meter-style forest,
and a JCW-style per-layer interpolation table (plus the size of a full JCW table for a network).

Each baseline is a scikit-learn estimator with `fit(rows)` and `predict_impl(columns, impl)` (microseconds),
like LatencyPredictor.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.interpolate import LinearNDInterpolator
from scipy.spatial import QhullError
from sklearn.base import BaseEstimator
from sklearn.ensemble import RandomForestRegressor

from jcw.predictor.features import impl_quantities, physical
from jcw.predictor.models import check_param, training_arrays
from jcw.profiler import networks as real_networks

#: JCW's lookup grid: width multipliers and densities in steps of 0.1.
JCW_WIDTH_STEPS = 10
JCW_DENSITY_STEPS = 10
#: The paper's reported table size for ResNet-18.
JCW_RESNET18_REPORTED = 17_800


class MacsProportional(BaseEstimator):
    """latency = c(op, impl) · work, with work = MACs (dense) or MACs × density (sparse). No parameters."""

    def fit(self, rows: Sequence[Mapping[str, Any]], y: None = None) -> MacsProportional:
        columns, impl, latency = training_arrays(rows)
        phys = physical(columns)
        self.ratio_: dict[tuple[str, str], float] = {}
        for name in ("dense", "sparse"):
            work = impl_quantities(phys, name)["work"]
            for op in ("conv", "dwconv"):
                mask = (impl == name) & (columns["op"] == op)
                if mask.any():  # geometric mean: the least-squares fit in log space
                    self.ratio_[(op, name)] = float(np.exp(np.mean(np.log(latency[mask] / work[mask]))))
        self.fallback_ = float(np.exp(np.mean(np.log(list(self.ratio_.values())))))
        return self

    def predict_impl(self, columns: Mapping[str, np.ndarray], impl: str) -> np.ndarray:
        work = impl_quantities(physical(columns), impl)["work"]
        ratio = np.array([self.ratio_.get((op, impl), self.fallback_) for op in columns["op"]])
        return ratio * work


def _nn_meter_features(columns: Mapping[str, np.ndarray], impl: str) -> np.ndarray:
    phys = physical(columns)
    # nn-Meter's conv kernel features; for the sparse kernel FLOPs and params count the non-zeros,
    # the only way its feature set can see weight density.
    flops = 2.0 * (phys["effective_macs"] if impl == "sparse" else phys["macs"])
    params = (phys["nnz"] if impl == "sparse" else phys["weights"]) + columns["cout"]
    return np.column_stack([columns["h"], columns["cin"], columns["cout"], columns["k"], columns["stride"],
                            flops, params])


class NnMeterForest(BaseEstimator):
    """nn-Meter style: a random forest per (op, impl) on (HW, CIN, COUT, KERNEL_SIZE, STRIDES, FLOPs, params),
    predicting latency directly as nn-Meter does. `n_estimators` and `random_state` are the forests'."""

    def __init__(self, n_estimators: int = 100, random_state: int = 0) -> None:
        self.n_estimators = n_estimators
        self.random_state = random_state

    def fit(self, rows: Sequence[Mapping[str, Any]], y: None = None) -> NnMeterForest:
        check_param("n_estimators", self.n_estimators, int, 1, 5000)
        check_param("random_state", self.random_state, int, 0)
        columns, impl, latency = training_arrays(rows)
        self.forests_: dict[tuple[str, str], RandomForestRegressor] = {}
        for name in ("dense", "sparse"):
            for op in ("conv", "dwconv"):
                mask = (impl == name) & (columns["op"] == op)
                if mask.sum() >= 2:
                    sub = {k: v[mask] for k, v in columns.items()}
                    forest = RandomForestRegressor(n_estimators=self.n_estimators, random_state=self.random_state,
                                                   n_jobs=1)
                    self.forests_[(op, name)] = forest.fit(_nn_meter_features(sub, name), latency[mask])
        self.macs_ = MacsProportional().fit(rows)
        return self

    def predict_impl(self, columns: Mapping[str, np.ndarray], impl: str) -> np.ndarray:
        out = self.macs_.predict_impl(columns, impl)  # for an (op, impl) never profiled
        for op in ("conv", "dwconv"):
            mask = columns["op"] == op
            if mask.any() and (op, impl) in self.forests_:
                sub = {k: v[mask] for k, v in columns.items()}
                out[mask] = self.forests_[(op, impl)].predict(_nn_meter_features(sub, impl))
        return np.maximum(out, 1e-3)


class JcwInterpolation(BaseEstimator):
    """JCW style: per layer context (op, impl, k, stride, h), piecewise-linear interpolation of log-latency
    over (log cout, log cin, density) between the measured points of that context.

    JCW measures a regular grid per network layer and interpolates trilinearly; at an equal budget
    the profile holds scattered points instead, so this interpolates over their Delaunay simplices
    (the same piecewise-linear family). Outside the measured hull it scales the nearest point by
    work; a context never measured falls back to MACs-proportional. `fallback_share_` reports how often.
    No parameters.
    """

    def fit(self, rows: Sequence[Mapping[str, Any]], y: None = None) -> JcwInterpolation:
        columns, impl, latency = training_arrays(rows)
        points: dict[tuple, list[int]] = defaultdict(list)
        for i in range(len(latency)):
            points[(columns["op"][i], impl[i], int(columns["k"][i]), int(columns["stride"][i]),
                    int(columns["h"][i]))].append(i)
        self.tables_: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray, Any]] = {}
        phys = physical(columns)
        for context, index in points.items():
            index = np.array(index)
            xyz = self._coords(columns, index)
            work = impl_quantities({k: v[index] for k, v in phys.items()}, context[1])["work"]
            log_t = np.log(latency[index])
            interpolator = None
            if len(index) >= 5:
                try:
                    interpolator = LinearNDInterpolator(xyz, log_t)
                except (QhullError, ValueError):
                    interpolator = None  # coplanar points: nearest-neighbour only
            self.tables_[context] = (xyz, log_t, np.log(work), interpolator)
        self.macs_ = MacsProportional().fit(rows)
        self.fallback_share_ = {"interpolated": 0, "nearest": 0, "macs": 0}
        return self

    @staticmethod
    def _coords(columns: Mapping[str, np.ndarray], index: np.ndarray | slice) -> np.ndarray:
        return np.column_stack([np.log2(columns["cout"][index]), np.log2(columns["cin"][index]),
                                columns["density"][index] * 4.0])  # density 0.25 ~ one channel octave

    def predict_impl(self, columns: Mapping[str, np.ndarray], impl: str) -> np.ndarray:
        out = self.macs_.predict_impl(columns, impl)
        work = np.log(impl_quantities(physical(columns), impl)["work"])
        contexts = defaultdict(list)
        for i in range(len(out)):
            contexts[(columns["op"][i], impl, int(columns["k"][i]), int(columns["stride"][i]),
                      int(columns["h"][i]))].append(i)
        counts = self.fallback_share_
        for context, index in contexts.items():
            index = np.array(index)
            if context not in self.tables_:
                counts["macs"] += len(index)
                continue
            xyz, log_t, log_work, interpolator = self.tables_[context]
            query = self._coords(columns, index)
            value = interpolator(query) if interpolator is not None else np.full(len(index), np.nan)
            outside = np.isnan(value)
            if outside.any():
                nearest = np.argmin(((query[outside, None, :] - xyz[None, :, :]) ** 2).sum(axis=2), axis=1)
                value[outside] = log_t[nearest] + work[index][outside] - log_work[nearest]
            counts["interpolated"] += int((~outside).sum())
            counts["nearest"] += int(outside.sum())
            out[index] = np.exp(value)
        return out


def jcw_table_size(network: str = "resnet18", width_steps: int = JCW_WIDTH_STEPS,
                   density_steps: int = JCW_DENSITY_STEPS) -> dict[str, int]:
    """Measurements a full JCW lookup table needs for one network (our grid: JCW's 0.1 steps).

    Per distinct layer shape: cout × cin width grid (fixed for the network input and classifier
    outputs) for the dense kernel, times the density grid for the sparse kernel (dwconv: dense only,
    one width since cin = cout).
    """
    seen, dense, sparse = set(), 0, 0
    for layer in real_networks.network_layers(network):
        key = (layer["op"], layer["cin"], layer["cout"], layer["k"], layer["stride"], layer["h"],
               real_networks.is_fixed_input(layer), real_networks.is_classifier(layer))
        if key in seen:
            continue
        seen.add(key)
        cin_steps = 1 if real_networks.is_fixed_input(layer) else width_steps
        cout_steps = 1 if real_networks.is_classifier(layer) else width_steps
        if layer["op"] == "dwconv":
            dense += width_steps
            continue
        dense += cin_steps * cout_steps
        sparse += cin_steps * cout_steps * density_steps
    return {"layers": len(seen), "dense": dense, "sparse": sparse, "total": dense + sparse}
