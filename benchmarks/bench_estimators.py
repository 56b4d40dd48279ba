"""Estimators benchmark (issue 12 part 3): the predictors as scikit-learn estimators predict exactly what the
hand-made plumbing did. Trains the same profiles with an earlier source tree (the anchor) and with this one,
then compares bit for bit every prediction of the saved predictors (layers: dense, sparse, best and the
chosen kernel; whole programs under both runtimes), `jcw predict --json`, the anchor's saved predictor as
loaded by this tree (the saved format is unchanged), and the accuracy table row by row
(the random and unseen-shape splits are GroupShuffleSplit draws now, so those rows are other draws). Prints
`jcw train` wall time as a ratio against the anchor's, measured in the same run.

Reproduce (the anchor is the commit before the change, unpacked outside the checkout):
    mkdir -p /tmp/jcw-anchor && git archive 2b03723 | tar -x -C /tmp/jcw-anchor
    .venv/bin/python benchmarks/bench_estimators.py --anchor /tmp/jcw-anchor \
        --profile benchmarks/out/profile11 --profile benchmarks/out/profile10 \
        --transfer benchmarks/out/profile9 benchmarks/out/profile1t-predictor
and for the time ratio on a shared machine, the fastest of 3 alternating runs per side:
    .venv/bin/python benchmarks/bench_estimators.py --anchor /tmp/jcw-anchor --profile benchmarks/out/profile11 \
        --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPEC_FIELDS = ("op", "cin", "cout", "k", "stride", "pad", "h", "w", "density")


def run(src: Path, *args: str) -> subprocess.CompletedProcess:
    """`python *args` with `src` first on the import path (the anchor's modules, or this checkout's). It runs
    in `src`: `python -m` puts the working directory before PYTHONPATH, so every path here is absolute."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=src)


def package_prefix(src: Path) -> str:
    """"jcw." for a tree with the stages under the jcw namespace (jcw/predictor -> predictor/), "" for an
    anchor from before it, whose stages are top-level packages."""
    return "jcw." if (src / "jcw" / "predictor").exists() else ""


def dump(predictor_dir: Path, profile: Path, out: Path) -> None:
    """Every prediction of a saved predictor on the profile's distinct layers and programs, into out.npz."""
    import importlib
    prefix = package_prefix(Path(os.environ["PYTHONPATH"]))
    persistence = importlib.import_module(prefix + "predictor.persistence")
    LayerSpec = importlib.import_module(prefix + "profiler.layerspec").LayerSpec
    ProfileStore = importlib.import_module(prefix + "profiler.store").ProfileStore

    with ProfileStore(profile, readonly=True) as store:
        rows, program_rows = store.measurements(), store.program_measurements()
    layers = list({tuple(r[k] for k in SPEC_FIELDS): None for r in rows})
    specs = [LayerSpec(**dict(zip(SPEC_FIELDS, layer))) for layer in layers]
    predictor = persistence.load(predictor_dir)
    arrays = {}
    predicted = predictor.predict(specs)
    for key in ("dense_ms", "sparse_ms", "best_ms"):
        arrays[key] = predicted[key]
    arrays["best_impl"] = predicted["best_impl"].astype(str)
    arrays["sparse_us"] = predictor.predict_impl([s for s in specs if s.op == "conv"], "sparse")
    programs = list({json.dumps(r["spec"], sort_keys=True): r["spec"] for r in program_rows}.values())
    for runtime in ("executorch", "sparse"):
        runnable = []
        for spec in programs:  # the sparse engine refuses some operators: keep the programs it runs
            try:
                predictor.predict_programs([spec], runtime)
                runnable.append(spec)
            except Exception:
                pass
        if runnable:
            for key, values in predictor.predict_programs(runnable, runtime).items():
                arrays[f"{runtime}/{key}"] = np.asarray(values)
    (out.parent / "layers.jsonl").write_text("".join(
        json.dumps({"id": f"l{i}", **dict(zip(SPEC_FIELDS, layer))}) + "\n" for i, layer in enumerate(layers)))
    np.savez(out, **arrays)


def accuracy_rows(text: str) -> dict[tuple[str, str], str]:
    """(held-out set, model) → the ±10 % cell of `jcw train`'s accuracy table."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 8 and cells[2].isdigit():
            out[(cells[0], cells[1])] = f"n={cells[2]} ±10% {cells[6]}"
    return out


def train_seconds(src: Path, train_args: list[str], target: Path) -> float:
    started = time.monotonic()
    trained = run(src, "-m", "jcw", "train", *train_args, "--out", str(target))
    if trained.returncode:
        sys.exit(f"jcw train with {src} failed: {trained.stderr.strip()[-300:]}")
    return time.monotonic() - started


def side(src: Path, name: str, train_args: list[str], profile: Path, out: Path) -> dict:
    target = out / name
    where = run(src, "-c", f"import {package_prefix(src)}predictor.models as m; print(m.__file__)").stdout.strip()
    if not where.startswith(str(src)):  # each side must run its own source tree, or the comparison is void
        sys.exit(f"the {name} side imports predictor from {where or '?'}, not from {src}")
    started = time.monotonic()
    trained = run(src, "-m", "jcw", "train", *train_args, "--out", str(target / "predictor"))
    seconds = time.monotonic() - started
    if trained.returncode:
        sys.exit(f"jcw train with {src} failed: {trained.stderr.strip()[-300:]}")
    dumped = run(src, str(Path(__file__).resolve()), "--dump", str(target / "predictor"), str(profile),
                 str(target / "predictions.npz"))
    if dumped.returncode:
        sys.exit(f"dumping predictions with {src} failed: {dumped.stderr.strip()[-300:]}")
    predicted = run(src, "-m", "jcw", "predict", "--predictor", str(target / "predictor"), "--layers",
                    str(target / "layers.jsonl"), "--json")
    card = json.loads((target / "predictor" / "card.json").read_text())
    return {"seconds": seconds, "table": accuracy_rows(trained.stdout), "predict": predicted.stdout,
            "arrays": dict(np.load(target / "predictions.npz")), "cv": card.get("cv_scores")}


def compare(name: str, anchor: dict, ours: dict) -> bool:
    same = [k for k in anchor["arrays"] if k in ours["arrays"] and anchor["arrays"][k].shape == ours["arrays"][k].shape
            and np.array_equal(anchor["arrays"][k], ours["arrays"][k],
                               equal_nan=anchor["arrays"][k].dtype.kind == "f")]
    values = sum(int(np.size(v)) for k, v in anchor["arrays"].items() if k in same)
    identical = len(same) == len(anchor["arrays"]) == len(ours["arrays"])
    print(f"\n== {name}")
    print(f"  predictions: {len(same)}/{len(anchor['arrays'])} arrays bit-identical ({values} values)"
          + ("" if identical else f"; DIFFERENT: {sorted(set(anchor['arrays']) - set(same))}"))
    print(f"  jcw predict --json: {'identical' if anchor['predict'] == ours['predict'] else 'DIFFERENT'} "
          f"({anchor['predict'].count(chr(10))} lines)")
    changed = [(key, anchor["table"].get(key), ours["table"].get(key))
               for key in dict.fromkeys([*anchor["table"], *ours["table"]])
               if anchor["table"].get(key) != ours["table"].get(key)]
    print(f"  accuracy table: {len(anchor['table']) - len(changed)} rows identical, {len(changed)} changed"
          + (" (other draws of the random and unseen-shape splits)" if changed else ""))
    for (held_out, model), before, after in changed:
        print(f"    {held_out:<26} {model:<18} {before or '-':<22} -> {after or '-'}")
    if anchor["cv"] != ours["cv"]:
        cv = lambda scores: ", ".join(f"{k} {100 * v:.1f}%" for k, v in (scores or {}).items())  # noqa: E731
        print(f"  grouped-CV ±10% (GroupKFold folds now): {cv(anchor['cv'])} -> {cv(ours['cv'])}")
    print(f"  jcw train wall time (fastest run): {ours['seconds']:.1f} s vs anchor {anchor['seconds']:.1f} s = "
          f"{ours['seconds'] / anchor['seconds']:.2f}x")
    return identical and anchor["predict"] == ours["predict"]


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--dump":
        dump(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--anchor", required=True, type=Path, help="source tree of the earlier commit")
    parser.add_argument("--profile", action="append", type=Path, default=[], help="profile to train (repeat)")
    parser.add_argument("--transfer", nargs=2, type=Path, metavar=("PROFILE", "PRIOR"),
                        help="also train PROFILE with --prior PRIOR (the transfer predictor)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "estimators")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time `jcw train` this many more times per side, alternating, and keep the fastest "
                             "(other tenants of a shared machine only ever slow a run down)")
    args = parser.parse_args()
    if not (args.anchor / "predictor" / "models.py").is_file():
        parser.error(f"--anchor {args.anchor} is not a jcw source tree (unpack one with git archive)")
    runs = [(str(p), ["--profile", str(p.resolve())], p.resolve()) for p in args.profile]
    if args.transfer:
        profile, prior = args.transfer
        runs.append((f"{profile} --prior {prior}", ["--profile", str(profile.resolve()), "--prior",
                                                     str(prior.resolve())], profile.resolve()))
    if not runs:
        parser.error("give at least one --profile or --transfer")
    all_identical = True
    for index, (name, train_args, profile) in enumerate(runs):
        out = args.out.resolve() / f"run{index}"
        # Anchor first, then this tree, back to back: the two timings see the same machine load.
        anchor = side(args.anchor.resolve(), "anchor", train_args, profile, out)
        ours = side(ROOT, "estimators", train_args, profile, out)
        for _ in range(args.repeats - 1):
            anchor["seconds"] = min(anchor["seconds"], train_seconds(args.anchor.resolve(), train_args,
                                                                     out / "anchor" / "timing"))
            ours["seconds"] = min(ours["seconds"], train_seconds(ROOT, train_args, out / "estimators" / "timing"))
        all_identical &= compare(name, anchor, ours)
        # The saved-predictor format is unchanged: this tree loads the anchor's predictor and predicts the same.
        dumped = run(ROOT, str(Path(__file__).resolve()), "--dump", str(out / "anchor" / "predictor"), str(profile),
                     str(out / "cross.npz"))
        cross = dict(np.load(out / "cross.npz")) if dumped.returncode == 0 else {}
        loaded = [k for k in anchor["arrays"] if k in cross and np.array_equal(
            anchor["arrays"][k], cross[k], equal_nan=cross[k].dtype.kind == "f")]
        print(f"  the anchor's saved predictor loaded by this tree: {len(loaded)}/{len(anchor['arrays'])} arrays "
              "bit-identical" + ("" if dumped.returncode == 0 else f" ({dumped.stderr.strip()[-200:]})"))
        all_identical &= len(loaded) == len(anchor["arrays"])
    print(f"\nall predictions bit-identical: {'yes' if all_identical else 'NO'}")
    return 0 if all_identical else 1


if __name__ == "__main__":
    sys.exit(main())
