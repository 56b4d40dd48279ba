"""Whole-program accuracy at smaller program budgets (issue 9): how many zoo and operator-family training
programs the program model needs. Draws training subsets of a profile's measured programs (zoo and operator
families apart), refits only the program model on each (the layer model is the predictor's), and scores the
profile's held-out sets: (a) zoo architectures at unseen genomes, (b) unseen architectures. Prints, per
budget, the mean and worst share within ±10% over the draws, next to the anchor row of 40 zoo programs and
no operator family (the plan before the operator families). No device time: the programs are measured.

Reproduce the table in benchmarks/RESULTS.md (a few seconds per budget):
    .venv/bin/python benchmarks/bench_program_budget.py --profile benchmarks/out/profile12 \\
        --predictor benchmarks/out/profile12-predictor
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jcw.predictor import persistence, program_eval  # noqa: E402
from jcw.predictor.pipeline import read_profile  # noqa: E402
from jcw.predictor.programs import ProgramModel  # noqa: E402
from jcw.profiler.operator_families import OPERATOR_FAMILIES  # noqa: E402

BUDGETS = ((40, 0), (40, 13), (40, 40), (80, 80), (120, 120))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, required=True, help="a profile with measured programs")
    parser.add_argument("--predictor", type=Path, required=True, help="its predictor (for the layer model)")
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    layers = persistence.load(args.predictor, layers_only=True).model
    data = program_eval.program_data(layers, read_profile(args.profile, None)["programs"])
    x, measured, sample = data["x"], data["measured_ms"], data["sample"]
    family = np.array(data["family"])
    operator = np.isin(family, OPERATOR_FAMILIES)
    zoo_train = np.where((sample == "train") & ~operator)[0]
    operator_train = np.where((sample == "train") & operator)[0]
    rng = np.random.default_rng(args.seed)
    print(f"# {args.profile}: {len(zoo_train)} zoo + {len(operator_train)} operator-family training programs, "
          f"{int((sample == 'holdout').sum())} held-out (a), {int((sample == 'unseen').sum())} unseen (b)")
    print("| training programs | (a) mean (worst) | (b) mean (worst) | (b) vs anchor |")
    print("|---|---|---|---|")
    anchor = None
    for n_zoo, n_operator in BUDGETS:
        if n_zoo > len(zoo_train) or n_operator > len(operator_train):
            continue
        draws = 1 if (n_zoo, n_operator) == (len(zoo_train), len(operator_train)) else args.draws
        shares = []
        for _ in range(draws):
            chosen = np.concatenate([rng.choice(zoo_train, n_zoo, replace=False),
                                     rng.choice(operator_train, n_operator, replace=False)])
            model = ProgramModel("auto", random_state=args.seed).fit(x[chosen], measured[chosen], list(family[chosen]))
            predicted = model.predict(x)
            shares.append([np.mean(np.abs(predicted[sample == s] / measured[sample == s] - 1) <= 0.10)
                           for s in ("holdout", "unseen")])
        shares = np.array(shares)
        anchor = shares[:, 1].mean() if anchor is None else anchor
        print(f"| {n_zoo} zoo + {n_operator} operator ({draws} draws) | {100 * shares[:, 0].mean():.1f}% "
              f"({100 * shares[:, 0].min():.1f}) | {100 * shares[:, 1].mean():.1f}% ({100 * shares[:, 1].min():.1f}) "
              f"| {shares[:, 1].mean() / anchor:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
