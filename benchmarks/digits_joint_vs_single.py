"""The paper's claim reproduced small (issue 5): on scikit-learn's digits, with real accuracy (prune,
recalibrate batch norm, evaluate on held-out data) and a predictor of this machine, the joint
width x density front is at least as accurate as width-only and density-only fronts at equal
predicted latency, at several budgets. Candidates are chosen on the validation split and reported on
the untouched test split too.

Reproduce:  python benchmarks/digits_joint_vs_single.py --predictor predictors/<name>
            [--pop 32] [--gens 40] [--seed 0] [--seeds 1] [--finetune-steps 0]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jcw.search import digits, zoo  # noqa: E402
from jcw.search.genome import SearchSpace  # noqa: E402
from jcw.search.graph import read_model  # noqa: E402
from jcw.search.objectives import LatencyModel, PruningProblem  # noqa: E402
from jcw.search.pymoo_parts import evolve, make_algorithm  # noqa: E402

MODES = {"joint": (True, True), "width-only": (True, False), "density-only": (False, True)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictor", help="predictor directory of this machine (jcw train --out ...); required")
    parser.add_argument("--pop", type=int, default=32)
    parser.add_argument("--gens", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0, help="first search seed; the CNN is trained with it too")
    parser.add_argument("--seeds", type=int, default=1, help="number of search seeds to average (default 1)")
    parser.add_argument("--finetune-steps", type=int, default=0, help="SGD steps after pruning (default 0)")
    parser.add_argument("--budgets", default="0.4,0.55,0.7,0.85",
                        help="budgets as fractions of the unpruned model's predicted latency")
    args = parser.parse_args()
    if not args.predictor:
        print("digits_joint_vs_single needs a trained predictor: pass --predictor DIR; it never uses a stand-in.",
              file=sys.stderr)
        return 2
    from jcw import predictor

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
    print(f"digits CNN trained in {time.perf_counter() - start:.1f} s: "
          f"val {digits.accuracy(model, *splits['val']):.4f}, test {digits.accuracy(model, *splits['test']):.4f} "
          f"({len(splits['train'][1])} train images)")

    fractions = [float(f) for f in args.budgets.split(",")]
    # per seed, mode and budget: (val, test) accuracy of the most val-accurate candidate that fits, or None
    picked: dict[tuple[int, str, float], tuple[float, float] | None] = {}
    unpruned = None
    for seed in range(args.seed, args.seed + args.seeds):
        for mode, (widths, densities) in MODES.items():
            space = SearchSpace(graph, prune_widths=widths, prune_densities=densities)
            latency = LatencyModel(latency_predictor, space, "sparse")   # density only pays on the sparse runtime
            val = digits.evaluator(model, space, splits, args.finetune_steps, seed, "val")
            test = digits.evaluator(model, space, splits, args.finetune_steps, seed, "test")
            problem = PruningProblem(space, latency, val)
            start = time.perf_counter()
            result = evolve(make_algorithm("nsga2", args.pop), problem, args.gens, seed=seed)
            unpruned = float(latency(space.uniform(1.0, 1.0)[None])[0])
            front = result.front
            lat, acc, X = result.F[front, 0], -result.F[front, 1], result.X[front]
            sparse = latency.per_layer(X)[1].sum(1)
            print(f"seed {seed} {mode:13s} {space.n_var:2d} genes, {problem.evaluations} evaluations, front "
                  f"{len(X)}, {lat.min():.4f}-{lat.max():.4f} ms, up to {sparse.max()} sparse layers, "
                  f"{time.perf_counter() - start:.1f} s")
            for fraction in fractions:
                fits = np.nonzero(lat <= fraction * unpruned)[0]
                if len(fits):
                    best = fits[np.argmax(acc[fits])]
                    picked[seed, mode, fraction] = (float(acc[best]), float(test(X[best][None])[0]))
                else:
                    picked[seed, mode, fraction] = None

    seeds = range(args.seed, args.seed + args.seeds)
    print(f"\nunpruned predicted latency {unpruned:.4f} ms; per budget the most val-accurate candidate that fits "
          f"(mean over {args.seeds} search seed(s); a budget no candidate meets counts as accuracy 0)")
    print(f"{'budget':>15s} | {'joint val/test':>15s} | {'width-only':>15s} | {'density-only':>15s} | "
          f"{'joint/width val; test':>21s} | {'joint/density val; test':>23s}")
    wins = total = 0

    def mean(mode, fraction, which):
        values = [picked[s, mode, fraction] for s in seeds]
        return float(np.mean([0.0 if v is None else v[which] for v in values])), all(v is None for v in values)

    for fraction in fractions:
        cells, val_acc, test_acc = [], {}, {}
        for mode in MODES:
            val_acc[mode], none = mean(mode, fraction, 0)
            test_acc[mode], _ = mean(mode, fraction, 1)
            cells.append(f"{'none fits':>15s}" if none else f"{val_acc[mode]:.4f}/{test_acc[mode]:.4f}".rjust(15))
        ratios = []
        for other in ("width-only", "density-only"):
            for s in seeds:
                total += 1
                ours, theirs = picked[s, "joint", fraction], picked[s, other, fraction]
                wins += theirs is None or (ours is not None and ours[0] >= theirs[0] - 1e-12)
            ratios.append("; ".join(f"{table['joint'] / table[other]:.3f}" if table[other] > 0 else "inf"
                                    for table in (val_acc, test_acc)))
        print(f"{fraction * unpruned:8.4f} ({fraction:.0%}) | " + " | ".join(cells) + f" | {ratios[0]:>21s} | "
              f"{ratios[1]:>23s}")
    print(f"\njoint at least as accurate (val, the search objective) as the single-axis search in {wins}/{total} "
          "(budget, seed, rival) comparisons")
    return 0


if __name__ == "__main__":
    sys.exit(main())
