"""Stand-in latency predictor for the search's algorithmic tests only (the real one is trained from a
profile; see predictor/). MACs-proportional dense latency, a sparse kernel whose cost scales with
density plus an im2col overhead for k > 1, so sparse wins below a crossover density; dwconv dense only.
Same predict() contract as predictor.load(...).predict.
"""
from __future__ import annotations

import numpy as np

from jcw.profiler.layerspec import LayerBatch, LayerSpec


class MacsPredictor:
    def __init__(self, gmacs_per_s: float = 20.0, overhead_ms: float = 0.01) -> None:
        self.rate, self.overhead = gmacs_per_s * 1e9, overhead_ms
        self.calls = 0

    def predict(self, layers):
        self.calls += 1
        cols = LayerBatch.coerce(layers)
        op, cin, cout, k = cols["op"], cols["cin"], cols["cout"], cols["k"]
        h, w, s, pad, d = cols["h"], cols["w"], cols["stride"], cols["pad"], cols["density"]
        oh, ow = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
        dw = op == "dwconv"
        macs = oh * ow * cout * np.where(dw, 1, cin) * k * k
        dense = self.overhead + macs / self.rate * 1e3 * np.where(dw, 4.0, 1.0)
        im2col = np.where(k > 1, 0.25 * cin * k * k * oh * ow / self.rate * 1e3 * 8, 0.0)
        sparse = np.where(dw, np.nan, self.overhead + 3.0 * d * macs / self.rate * 1e3 + im2col)
        use_sparse = ~dw & (sparse < dense)
        return {"dense_ms": dense, "sparse_ms": sparse, "best_ms": np.where(use_sparse, sparse, dense),
                "best_impl": np.where(use_sparse, "sparse", "dense").astype(object)}


def spec_list(cols) -> list[LayerSpec]:
    return LayerBatch.coerce(cols).to_specs()
