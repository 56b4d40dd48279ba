"""Joint vs width-only vs density-only on digits for the sparse engine (issue 10, "Must show"), measured.

Three `jcw search --model digits --accuracy digits --runtime sparse` runs with the same predictor, seed, population,
generations and budgets: joint (width x density), width-only (`--no-density`) and density-only (`--no-width`).
Accuracy is real: the digits CNN trained on scikit-learn's digits, each candidate pruned, its batch norm
recalibrated and scored on the validation split (the search's objective); the untouched test split is reported
too. At each budget the best candidate of each search (the most accurate whose predicted engine latency fits, as
`jcw export --pick` chooses it) is exported with `jcw export --runtime sparse --device D` and measured: the
engine's predicted and measured latency of its .jcwnet and the measured latency of its dense .pte. The unpruned
digits network is exported and measured in the same run (`jcw export --uniform width=1,density=1 --runtime sparse`,
same device, same threads), and every speed-up is against its .pte, the dense deployment.

Budgets are fractions of the unpruned network's predicted engine latency (`--budgets`). Every measurement is
`latency_ms` = us_min of the fastest of `--rounds` rounds, at the predictor's thread count.

Reproduce:
    .venv/bin/python benchmarks/bench_digits_sparse.py --predictor predictors/<this machine>
        [--pop 32] [--gens 40] [--seed 0] [--budgets 0.5,0.7,0.85] [--rounds 3] [--device local] [--out DIR]
    tiny check: --pop 8 --gens 2 --rounds 1
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jcw.__main__ import main as jcw  # noqa: E402
from jcw.search import digits, zoo  # noqa: E402
from jcw.search.export import rebuild  # noqa: E402
from jcw.search.genome import SearchSpace  # noqa: E402
from jcw.search.graph import read_model  # noqa: E402
from jcw.search.objectives import LatencyModel  # noqa: E402
from jcw.search.run import best_per_budget  # noqa: E402

MODES = {"joint": [], "width-only": ["--no-density"], "density-only": ["--no-width"]}


def run_jcw(*argv: str) -> str:
    """`jcw ARGV` in this process; its stdout, or SystemExit with jcw's own sentence on failure."""
    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        status = jcw(list(argv))
    if status != 0:
        raise SystemExit(f"bench_digits_sparse: `jcw {shlex.join(argv)}` failed ({status}): "
                         f"{errors.getvalue().strip()}")
    return printed.getvalue()


def unpruned_engine_ms(predictor_dir: str) -> float:
    """The predicted engine latency of the unpruned digits network (the budgets' unit)."""
    from jcw import predictor

    model, shape = zoo.build("digits")
    space = SearchSpace(read_model(model, torch.randn(*shape)), name="digits")
    return float(LatencyModel(predictor.load(predictor_dir), space, "sparse")(space.uniform(1.0, 1.0)[None])[0])


def held_out_accuracy(run_dir: Path, seed: int):
    """Accuracy on the test split of a genome of this run (its trained base model, pruned, BN recalibrated)."""
    model, _, space, _, _ = rebuild(run_dir)
    return digits.evaluator(model, space, digits.load_splits(seed), seed=seed, split="test").accuracy_of


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictor", required=True, help="trained predictor directory (jcw train --out ...)")
    parser.add_argument("--pop", type=int, default=32)
    parser.add_argument("--gens", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0, help="search seed; the digits CNN is trained with it too")
    parser.add_argument("--budgets", default="0.5,0.7,0.85",
                        help="budgets as fractions of the unpruned network's predicted engine latency")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds per measurement; the fastest counts")
    parser.add_argument("--device", default="local", help="where to measure (default: local)")
    parser.add_argument("--out", help="directory for the runs and exports (default: a new temporary directory)")
    args = parser.parse_args()
    try:
        fractions = [float(f) for f in args.budgets.split(",")]
    except ValueError:
        fractions = []
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        print(f"bench_digits_sparse: --budgets must be fractions in (0, 1] separated by commas, got {args.budgets!r}",
              file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="jcw-digits-sparse-"))
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    try:
        unpruned_ms = unpruned_engine_ms(args.predictor)
    except Exception as exc:  # a missing or foreign predictor: its own sentence
        print(f"bench_digits_sparse: {exc}", file=sys.stderr)
        return 2
    budgets = [round(f * unpruned_ms, 6) for f in fractions]
    print(f"unpruned digits network: predicted engine latency {unpruned_ms:.4f} ms; budgets "
          + ", ".join(f"{b:.4f} ms ({f:.0%})" for b, f in zip(budgets, fractions)) + f"; runs in {out}")

    fronts, test_of = {}, {}
    common = ["--predictor", args.predictor, "--model", "digits", "--accuracy", "digits", "--runtime", "sparse",
              "--pop", str(args.pop), "--gens", str(args.gens), "--seed", str(args.seed),
              "--budgets", ",".join(repr(b) for b in budgets)]
    for mode, flags in MODES.items():
        start = time.perf_counter()
        run_jcw("search", *common, *flags, "--out", str(out / mode))
        meta = json.loads((out / mode / "run.json").read_text())
        fronts[mode] = json.loads((out / mode / "front.json").read_text())
        test_of[mode] = held_out_accuracy(out / mode, args.seed)
        print(f"search {mode:12s}: {meta['n_genes']:2d} genes, front {len(fronts[mode]):3d}, "
              f"{time.perf_counter() - start:5.1f} s; whole networks by {meta['sparse_program_model']}")

    threads = json.loads((out / "joint" / "run.json").read_text()).get("threads")
    measure = ["--device", args.device, "--rounds", str(args.rounds), "--json"]
    base = json.loads(run_jcw("export", "--model", "digits", "--uniform", "width=1,density=1", "--runtime", "sparse",
                              *measure, *(["--threads", str(threads)] if threads else []),
                              "--out", str(out / "unpruned.pte")))
    unpruned_acc = next(r for r in json.loads((out / "joint" / "run.json").read_text())["references"]
                        if r["kind"] == "width" and r["value"] == 1.0)["accuracy"]
    base_pte, base_net = base["measured_ms"], base["net_measured_ms"]
    print(f"\nunpruned, measured on {base['device']} ({threads or 'default'} thread(s)): .pte {base_pte:.4f} ms, "
          f".jcwnet {base_net:.4f} ms (engine / .pte {base_net / base_pte:.2f}), val accuracy {unpruned_acc:.4f}")

    header = (f"{'budget ms':>14s} {'search':>12s} {'val':>6s} {'test':>6s} {'sparse':>6s} {'engine pred':>11s} "
              f"{'engine meas':>11s} {'meas/pred':>9s} {'.pte meas':>9s} {'engine x':>8s} {'.pte x':>7s}")
    print("speed-ups (x) against the unpruned .pte measured above; sparse = layers the engine runs sparse\n" + header)
    rows = []
    for budget, fraction in zip(budgets, fractions):
        for mode in MODES:
            (chosen,) = best_per_budget(fronts[mode], [budget])
            label = f"{budget:.4f} ({fraction:.0%})"
            if chosen is None:
                print(f"{label:>14s} {mode:>12s}  none fits")
                rows.append({"budget_ms": budget, "mode": mode, "candidate": None})
                continue
            report = json.loads(run_jcw("export", "--run", str(out / mode), "--pick", repr(budget), "--runtime",
                                        "sparse", *measure, "--out", str(out / f"{mode}-{fraction:g}.pte")))
            test = test_of[mode](np.array(chosen["genome"]))
            net, pte = report["net_measured_ms"], report["measured_ms"]
            row = {"budget_ms": budget, "mode": mode, "candidate": report["candidate"], "val": chosen["accuracy"],
                   "test": test, "sparse_layers": len(report["net_sparse_layers"]),
                   "engine_predicted_ms": report["net_predicted_ms"], "engine_measured_ms": net,
                   "pte_measured_ms": pte, "engine_speedup": None if net is None else base_pte / net,
                   "pte_speedup": base_pte / pte, "engine_error": report["net_max_abs_error"]}
            rows.append(row)
            engine = "n/a" if net is None else f"{net:.4f}"
            ratio = "n/a" if net is None else f"{net / report['net_predicted_ms']:.2f}"
            speedup = "n/a" if net is None else f"{base_pte / net:.2f}"
            print(f"{label:>14s} {mode:>12s} {chosen['accuracy']:6.4f} {test:6.4f} {row['sparse_layers']:6d} "
                  f"{report['net_predicted_ms']:11.4f} {engine:>11s} {ratio:>9s} {pte:9.4f} {speedup:>8s} "
                  f"{base_pte / pte:7.2f}")
    (out / "bench_digits_sparse.json").write_text(json.dumps(
        {"unpruned": {"pte_ms": base_pte, "net_ms": base_net, "predicted_engine_ms": unpruned_ms,
                      "val": unpruned_acc}, "threads": threads, "device": args.device, "rows": rows}, indent=1))
    print(f"\nwritten to {out / 'bench_digits_sparse.json'}\nreproduce: .venv/bin/python "
          f"benchmarks/bench_digits_sparse.py {shlex.join(sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
