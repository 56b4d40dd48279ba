"""Search benchmark (issue 5): hypervolume of our front (NSGA-II + JCW selection) against pymoo's NSGA-II
with its default operators and against random search, at equal numbers of predictor evaluations, and the
wall time of a ResNet-18 search with JCW's settings (64 individuals, 128 generations; target < 30 s).

Reproduce:  python benchmarks/bench_search.py --predictor predictors/<name> [--seeds 3] [--models resnet18]
(train a predictor first: jcw profile --device local --out profiles/local && jcw train --profile
profiles/local --out predictors/local). Accuracy is the data-free proxy, so the run needs no data set.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search import zoo  # noqa: E402
from search.errors import SearchError  # noqa: E402
from search.genome import SearchSpace  # noqa: E402
from search.graph import read_model  # noqa: E402
from search.jcw_selection import JCWSurvival  # noqa: E402
from search.nsga2 import NSGA2, hypervolume_2d, non_dominated_sort  # noqa: E402
from search.objectives import LatencyModel, ProxyAccuracy, PruningProblem  # noqa: E402


def pymoo_nsga2(space, problem, pop, gens, seed):
    """pymoo's NSGA-II, default operators, on the same genes relaxed to reals and rounded in evaluation."""
    from pymoo.algorithms.moo.nsga2 import NSGA2 as PymooNSGA2
    from pymoo.core.problem import Problem
    from pymoo.optimize import minimize

    class Relaxed(Problem):
        def __init__(self):
            super().__init__(n_var=space.n_var, n_obj=2, xl=space.xl - 0.49, xu=space.xu + 0.49)

        def _evaluate(self, X, out, *args, **kwargs):
            out["F"] = problem.evaluate(np.clip(np.floor(X + 0.5), space.xl, space.xu).astype(np.int64))[0]

    result = minimize(Relaxed(), PymooNSGA2(pop_size=pop), ("n_gen", gens), seed=seed)
    return result.opt.get("F")


def random_search(space, problem, n, seed, batch=1024):
    rng = np.random.default_rng(seed)
    F = []
    for start in range(0, n, batch):
        X = rng.integers(space.xl, space.xu + 1, size=(min(batch, n - start), space.n_var))
        F.append(problem.evaluate(X)[0])
    F = np.vstack(F)
    return F[non_dominated_sort(F)[0]]


def best_within(F, budget):
    fits = F[F[:, 0] <= budget]
    return float(-fits[:, 1].min()) if len(fits) else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictor", help="predictor directory (jcw train --out ...); required")
    parser.add_argument("--models", default="resnet18", help="comma-separated zoo models (default resnet18)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pop", type=int, default=64)
    parser.add_argument("--gens", type=int, default=128)
    parser.add_argument("--runtime", default="executorch", choices=("executorch", "sparse"),
                        help="latency objective (default executorch: whole program, width-only genome)")
    args = parser.parse_args()
    if not args.predictor:
        print("bench_search needs a trained predictor: pass --predictor DIR (jcw profile ... then jcw train ...); "
              "it never falls back to a stand-in.", file=sys.stderr)
        return 2
    import predictor
    try:
        latency_predictor = predictor.load(args.predictor)
    except predictor.PredictorError as exc:
        print(f"bench_search: {exc}", file=sys.stderr)
        return 2
    print(f"predictor: {args.predictor} ({latency_predictor.card.get('model')}, device "
          f"{latency_predictor.card.get('device_address')}); runtime {args.runtime}; pop {args.pop}, gens {args.gens}, "
          f"seeds {args.seeds}")
    for name in args.models.split(","):
        try:
            model, shape = zoo.build(name)
        except SearchError as exc:
            print(f"bench_search: {exc}", file=sys.stderr)
            return 2
        space = SearchSpace(read_model(model, torch.randn(*shape)), prune_densities=args.runtime == "sparse",
                            name=name)
        proxy = ProxyAccuracy(model, space)
        latency = LatencyModel(latency_predictor, space, args.runtime)
        full = float(latency(space.uniform(1.0, 1.0)[None])[0])
        reference = (full, 0.0)                   # no slower than unpruned, no worse than accuracy 0
        budgets = [0.3 * full, 0.5 * full, 0.7 * full]
        rows = {"ours (NSGA-II + JCW selection)": [], "pymoo NSGA-II (defaults)": [], "random search": []}
        at_budget = {k: [] for k in rows}
        times = {k: [] for k in rows}
        evals = {}
        for seed in range(args.seeds):
            runs = {}
            ours_latency = LatencyModel(latency_predictor, space, args.runtime)
            problem = PruningProblem(space, ours_latency, proxy)
            t = time.perf_counter()
            result = NSGA2(args.pop, survival=JCWSurvival()).run(problem, args.gens, seed=seed)
            times["ours (NSGA-II + JCW selection)"].append(time.perf_counter() - t)
            runs["ours (NSGA-II + JCW selection)"] = result.F[result.front]
            n_evals = problem.evaluations
            evals.setdefault("ours (NSGA-II + JCW selection)", n_evals)
            problem = PruningProblem(space, latency, proxy)
            t = time.perf_counter()
            runs["pymoo NSGA-II (defaults)"] = pymoo_nsga2(space, problem, args.pop, args.gens, seed)
            times["pymoo NSGA-II (defaults)"].append(time.perf_counter() - t)
            evals.setdefault("pymoo NSGA-II (defaults)", problem.evaluations)
            problem = PruningProblem(space, latency, proxy)
            t = time.perf_counter()
            runs["random search"] = random_search(space, problem, n_evals, seed)
            times["random search"].append(time.perf_counter() - t)
            evals.setdefault("random search", problem.evaluations)
            for key, F in runs.items():
                rows[key].append(hypervolume_2d(F, reference) / full)
                at_budget[key].append([best_within(F, b) for b in budgets])
        ours_hv = np.mean(rows["ours (NSGA-II + JCW selection)"])
        print(f"\n{name}: {space.n_layers} layers, {space.n_var} genes, unpruned {full:.3f} ms predicted; "
              f"hypervolume of (latency, -proxy accuracy) over reference ({full:.3f} ms, 0), / {full:.3f}")
        header = f"{'search':34s} {'evals':>6s} {'HV mean':>8s} {'HV min':>7s} {'ours/it':>8s} {'wall s':>7s}  " \
                 + "  ".join(f"acc@{b / full:.0%}" for b in budgets)
        print(header)
        for key in rows:
            hv = np.array(rows[key])
            acc = np.nanmean(np.array(at_budget[key]), axis=0)
            print(f"{key:34s} {evals[key]:6d} {hv.mean():8.4f} {hv.min():7.4f} {ours_hv / hv.mean():8.3f} "
                  f"{np.mean(times[key]):7.2f}  " + "  ".join(f"{a:7.4f}" for a in acc))
        wall = np.mean(times["ours (NSGA-II + JCW selection)"])
        print(f"{name} search wall time ({args.pop} x {args.gens}): {wall:.2f} s = {wall / 30.0:.3f} of the 30 s "
              f"target; pymoo NSGA-II same settings {np.mean(times['pymoo NSGA-II (defaults)']):.2f} s "
              f"(ours/pymoo {wall / np.mean(times['pymoo NSGA-II (defaults)']):.2f}); one search asks the predictor "
              f"for {ours_latency.rows} layer rows in {ours_latency.calls} calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
