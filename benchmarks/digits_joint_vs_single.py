"""The paper's claim reproduced small (issue 5): on scikit-learn's digits, with real accuracy (prune,
recalibrate batch norm, evaluate on held-out data) and a predictor of this machine, the joint
width x density front is at least as accurate as width-only and density-only fronts at equal
predicted latency, at several budgets. Candidates are chosen on the validation split and reported on
the untouched test split too.

Reproduce:  python benchmarks/digits_joint_vs_single.py --predictor predictors/<name>
            [--pop 32] [--gens 40] [--seed 0] [--finetune-steps 0]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search import digits, zoo  # noqa: E402
from search.genome import SearchSpace  # noqa: E402
from search.graph import read_model  # noqa: E402
from search.jcw_selection import JCWSurvival  # noqa: E402
from search.nsga2 import NSGA2  # noqa: E402
from search.objectives import LatencyModel, PruningProblem  # noqa: E402

MODES = {"joint": (True, True), "width-only": (True, False), "density-only": (False, True)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictor", help="predictor directory of this machine (jcw train --out ...); required")
    parser.add_argument("--pop", type=int, default=32)
    parser.add_argument("--gens", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finetune-steps", type=int, default=0, help="SGD steps after pruning (default 0)")
    parser.add_argument("--budgets", default="0.4,0.55,0.7,0.85",
                        help="budgets as fractions of the unpruned model's predicted latency")
    args = parser.parse_args()
    if not args.predictor:
        print("digits_joint_vs_single needs a trained predictor: pass --predictor DIR; it never uses a stand-in.",
              file=sys.stderr)
        return 2
    import predictor
    try:
        latency_predictor = predictor.load(args.predictor)
    except predictor.PredictorError as exc:
        print(f"digits_joint_vs_single: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    splits = digits.load_splits(args.seed)
    model, shape = zoo.build("digits", args.seed)
    start = time.perf_counter()
    digits.train(model, *splits["train"], seed=args.seed)
    graph = read_model(model, torch.randn(*shape))
    print(f"digits CNN trained in {time.perf_counter() - start:.1f} s: val {digits.accuracy(model, *splits['val']):.4f}, "
          f"test {digits.accuracy(model, *splits['test']):.4f} ({len(splits['train'][1])} train images)")

    fronts, unpruned = {}, None
    for mode, (widths, densities) in MODES.items():
        space = SearchSpace(graph, prune_widths=widths, prune_densities=densities)
        latency = LatencyModel(latency_predictor, space)
        val = digits.evaluator(model, space, splits, args.finetune_steps, args.seed, "val")
        test = digits.evaluator(model, space, splits, args.finetune_steps, args.seed, "test")
        problem = PruningProblem(space, latency, val)
        start = time.perf_counter()
        result = NSGA2(args.pop, survival=JCWSurvival()).run(problem, args.gens, seed=args.seed)
        X = result.X[result.front]
        unpruned = float(latency(space.uniform(1.0, 1.0)[None])[0])
        _, sparse = latency.per_layer(X)
        fronts[mode] = {"lat": result.F[result.front, 0], "val": -result.F[result.front, 1], "X": X,
                        "test": test, "sparse": sparse.sum(1)}
        print(f"{mode:13s} {space.n_var:2d} genes, {problem.evaluations} evaluations, front {len(X)}, "
              f"{fronts[mode]['lat'].min():.4f}-{fronts[mode]['lat'].max():.4f} ms, "
              f"{time.perf_counter() - start:.1f} s")

    fractions = [float(f) for f in args.budgets.split(",")]
    print(f"\nunpruned predicted latency {unpruned:.4f} ms; per budget the most val-accurate candidate that fits")
    print(f"{'budget':>15s} | {'joint val/test':>15s} | {'width-only':>15s} | {'density-only':>15s} | "
          f"{'joint/width':>11s} {'joint/density':>13s} (val; test)")
    wins = total = 0
    for fraction in fractions:
        budget = fraction * unpruned
        cells, val_acc, test_acc = [], {}, {}
        for mode, front in fronts.items():
            fits = np.nonzero(front["lat"] <= budget)[0]
            if not len(fits):
                cells.append(f"{'none fits':>15s}")
                val_acc[mode] = test_acc[mode] = 0.0       # no candidate at all: the budget cannot be met
                continue
            best = fits[np.argmax(front["val"][fits])]
            val_acc[mode] = float(front["val"][best])
            test_acc[mode] = float(front["test"](front["X"][best][None])[0])
            cells.append(f"{val_acc[mode]:.4f}/{test_acc[mode]:.4f}".rjust(15))

        def ratio(a, b, table):
            return f"{table[a] / table[b]:.3f}" if table[b] > 0 else "inf"
        for other in ("width-only", "density-only"):
            total += 1
            wins += val_acc["joint"] >= val_acc[other] - 1e-12
        print(f"{budget:8.4f} ({fraction:.0%}) | " + " | ".join(cells) + " | "
              f"{ratio('joint', 'width-only', val_acc)}; {ratio('joint', 'width-only', test_acc):>5s} "
              f"{ratio('joint', 'density-only', val_acc):>7s}; {ratio('joint', 'density-only', test_acc)}")
    print(f"\njoint at least as accurate (val) as the single-axis search in {wins}/{total} budget comparisons")
    return 0


if __name__ == "__main__":
    sys.exit(main())
