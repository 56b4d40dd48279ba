"""Search benchmark (issues 5 and 12): hypervolume of the search's front on pymoo — NSGA-II with JCW's
target-wise selection (`jcw search`'s default), pymoo's NSGA-II with its default operators and survival, the
other `--algorithm` choices, random search — and, as the anchor, the hand-written NSGA-II + JCW selection it
replaced (read from git, `--legacy REV`), all at equal numbers of predictor evaluations on the same seeds, plus the
wall time of a ResNet-18 search with JCW's settings (64 individuals, 128 generations; target < 30 s).

Reproduce:  python benchmarks/bench_search.py --predictor predictors/<name> [--seeds 3] [--models resnet18]
(train a predictor first: jcw profile --device local --out profiles/local && jcw train --profile
profiles/local --out predictors/local). Accuracy is the data-free proxy, so the run needs no data set.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jcw.search import zoo  # noqa: E402
from jcw.search.errors import SearchError  # noqa: E402
from jcw.search.genome import SearchSpace  # noqa: E402
from jcw.search.graph import read_model  # noqa: E402
from jcw.search.objectives import LatencyModel, ProxyAccuracy, PruningProblem  # noqa: E402
from jcw.search.pymoo_parts import (  # noqa: E402
    ALGORITHMS,
    SpreadSampling,
    evolve,
    feasible_front,
    hypervolume,
    make_algorithm,
)

#: The last commit with the hand-written NSGA-II (search/nsga2.py, search/jcw_selection.py), the anchor.
LEGACY_COMMIT = "2b03723"
DEFAULT = "pymoo NSGA-II + JCW selection (default)"
LEGACY = "hand-written NSGA-II + JCW (before)"
PYMOO_DEFAULTS = "pymoo NSGA-II (defaults)"


def load_legacy(rev: str):
    """The hand-written NSGA-II and JCW survival as they were at `rev` (read with `git show`, nothing checked
    out), or None with the reason when git or the revision is not there."""
    modules = {}
    try:
        for name in ("nsga2", "jcw_selection"):
            source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:search/{name}.py"], check=True,
                                    capture_output=True, text=True).stdout
            module = types.ModuleType(f"legacy_{name}")
            module.__dict__["__name__"] = f"legacy_{name}"
            if name == "jcw_selection":   # its one relative import, pointed at the legacy nsga2 just loaded
                source = source.replace("from .nsga2 import", "from legacy_nsga2 import")
            sys.modules[module.__name__] = module
            exec(compile(source, f"{rev}:search/{name}.py", "exec"), module.__dict__)  # noqa: S102
            modules[name] = module
    except (OSError, subprocess.CalledProcessError) as exc:
        return None, f"no hand-written anchor ({getattr(exc, 'stderr', '') or exc})".strip()
    return modules, None


def pymoo_nsga2_defaults(space, problem, pop, gens, seed):
    """pymoo's NSGA-II, default operators, on the same genes relaxed to reals and rounded in evaluation."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.problem import Problem
    from pymoo.optimize import minimize

    class Relaxed(Problem):
        def __init__(self):
            super().__init__(n_var=space.n_var, n_obj=2, xl=space.xl - 0.49, xu=space.xu + 0.49)

        def _evaluate(self, X, out, *args, **kwargs):
            out["F"] = problem.evaluate(np.clip(np.floor(X + 0.5), space.xl, space.xu).astype(np.int64))[0]

    result = minimize(Relaxed(), NSGA2(pop_size=pop), ("n_gen", gens), seed=seed)
    return result.opt.get("F")


def random_search(space, problem, n, seed, batch=1024):
    rng = np.random.default_rng(seed)
    F = []
    for start in range(0, n, batch):
        X = rng.integers(space.xl, space.xu + 1, size=(min(batch, n - start), space.n_var))
        F.append(problem.evaluate(X)[0])
    F = np.vstack(F)
    return F[feasible_front(F, np.zeros(len(F)))]


def searches(space, args, legacy, keep_share: float, seed: int):
    """(row label, function of a fresh PruningProblem returning the final front's F) for one seed: the
    hand-written anchor, `jcw search`'s default, pymoo's NSGA-II as shipped, the other --algorithm choices."""
    def on_pymoo(algorithm):
        def run(problem):
            result = evolve(make_algorithm(algorithm, args.pop, SpreadSampling(keep_share=keep_share)),
                            problem, args.gens, seed=seed)
            return result.F[result.front]
        return run

    def hand_written(problem):
        nsga2 = legacy["nsga2"]
        result = nsga2.NSGA2(args.pop, sampling=nsga2.SpreadSampling(keep_share=keep_share),
                             survival=legacy["jcw_selection"].JCWSurvival()).run(problem, args.gens, seed=seed)
        return result.F[result.front]

    rows = [(LEGACY, hand_written)] if legacy else []
    rows += [(DEFAULT, on_pymoo("nsga2")),
             (PYMOO_DEFAULTS, lambda problem: pymoo_nsga2_defaults(space, problem, args.pop, args.gens, seed))]
    return rows + [(f"pymoo {key} (--algorithm {key})", on_pymoo(key)) for key in ALGORITHMS if key != "nsga2"]


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
    parser.add_argument("--legacy", default=LEGACY_COMMIT, metavar="REV",
                        help=f"git revision holding the hand-written NSGA-II, the anchor (default {LEGACY_COMMIT}); "
                             "'none' leaves it out")
    args = parser.parse_args()
    if not args.predictor:
        print("bench_search needs a trained predictor: pass --predictor DIR (jcw profile ... then jcw train ...); "
              "it never falls back to a stand-in.", file=sys.stderr)
        return 2
    from jcw import predictor

    try:
        latency_predictor = predictor.load(args.predictor)
    except predictor.PredictorError as exc:
        print(f"bench_search: {exc}", file=sys.stderr)
        return 2
    legacy, why_not = (None, "left out (--legacy none)") if args.legacy == "none" else load_legacy(args.legacy)
    print(f"predictor: {args.predictor} ({latency_predictor.card.get('model')}, device "
          f"{latency_predictor.card.get('device_address')}); runtime {args.runtime}; pop {args.pop}, gens {args.gens}, "
          f"seeds {args.seeds}; anchor: " + (f"hand-written NSGA-II at {args.legacy}" if legacy else why_not))
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
        keep_share = 0.5 if args.runtime == "sparse" else 0.0     # as `jcw search` samples the first population

        hv, at_budget, times, evals = {}, {}, {}, {}
        for seed in range(args.seeds):
            n_evals = None
            for key, search in searches(space, args, legacy, keep_share, seed):
                problem = PruningProblem(space, LatencyModel(latency_predictor, space, args.runtime), proxy)
                start = time.perf_counter()
                F = search(problem)
                times.setdefault(key, []).append(time.perf_counter() - start)
                n_evals = n_evals or problem.evaluations
                evals.setdefault(key, problem.evaluations)
                hv.setdefault(key, []).append(hypervolume(F, reference) / full)
                at_budget.setdefault(key, []).append([best_within(F, b) for b in budgets])
                if key == DEFAULT:
                    default_latency = problem.latency
            problem = PruningProblem(space, latency, proxy)
            start = time.perf_counter()
            F = random_search(space, problem, n_evals, seed)
            times.setdefault("random search", []).append(time.perf_counter() - start)
            evals.setdefault("random search", problem.evaluations)
            hv.setdefault("random search", []).append(hypervolume(F, reference) / full)
            at_budget.setdefault("random search", []).append([best_within(F, b) for b in budgets])
        anchor = LEGACY if legacy else PYMOO_DEFAULTS
        print(f"\n{name}: {space.n_layers} layers, {space.n_var} genes, unpruned {full:.3f} ms predicted; "
              f"hypervolume (pymoo HV) of (latency, -proxy accuracy) over reference ({full:.3f} ms, 0), / {full:.3f}; "
              f"ratios against '{anchor}' in this run")
        header = f"{'search':50s} {'evals':>6s} {'HV mean':>8s} {'HV min':>7s} {'HV/anchor':>9s} {'wall s':>7s} " \
                 f"{'time/anchor':>11s}  " + "  ".join(f"acc@{b / full:.0%}" for b in budgets)
        print(header)
        anchor_hv, anchor_time = np.mean(hv[anchor]), np.mean(times[anchor])
        for key in hv:
            acc = np.nanmean(np.array(at_budget[key]), axis=0)
            print(f"{key:50s} {evals[key]:6d} {np.mean(hv[key]):8.4f} {np.min(hv[key]):7.4f} "
                  f"{np.mean(hv[key]) / anchor_hv:9.3f} {np.mean(times[key]):7.2f} "
                  f"{np.mean(times[key]) / anchor_time:11.2f}  " + "  ".join(f"{a:7.4f}" for a in acc))
        if legacy:
            per_seed = np.array(hv[DEFAULT]) - np.array(hv[LEGACY])
            print(f"gate: HV of the default >= the hand-written NSGA-II on the same seeds: "
                  f"{'met' if np.mean(hv[DEFAULT]) >= anchor_hv else 'NOT met'} (mean {np.mean(hv[DEFAULT]):.4f} vs "
                  f"{anchor_hv:.4f}; per seed {' '.join(f'{d:+.4f}' for d in per_seed)}); time "
                  f"{np.mean(times[DEFAULT]) / anchor_time:.2f}x the hand-written (gate <= 2x)")
        wall = np.mean(times[DEFAULT])
        print(f"{name} search wall time ({args.pop} x {args.gens}), the default: {wall:.2f} s = {wall / 30.0:.3f} of "
              f"the 30 s target; one search asks the predictor for {default_latency.rows} layer rows in "
              f"{default_latency.calls} calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
