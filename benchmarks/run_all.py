"""Every benchmark of the kit in one run (`make bench`), each output kept in the work directory.

Order matters: the profiler benchmark first (it wants the quietest machine), then one
large local profile that the predictor, search and digits benchmarks all reuse, then the
ADB benchmarks on the emulated phone. Reproduce: `.venv/bin/python benchmarks/run_all.py
[--workdir benchmarks/out] [--quick]`; copy the figures into benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def run(name: str, argv: list[str], workdir: Path) -> int:
    print(f"\n##### {name}: {' '.join(argv)}", flush=True)
    started = time.monotonic()
    with open(workdir / f"{name}.txt", "w", encoding="utf-8") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        status = proc.wait()
    print(f"##### {name}: exit {status} after {time.monotonic() - started:.0f} s", flush=True)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument("--quick", action="store_true", help="small sizes everywhere: a smoke check of the scripts")
    parser.add_argument("--only", default="",
                        help="comma-separated subset: profiler,predictor,search,digits,whole,bad-input,sparse,adb,lab,"
                             "layerbatch")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    only = {s for s in args.only.split(",") if s}

    def want(name: str) -> bool:
        return not only or name in only

    quick = ["--quick"] if args.quick else []
    profile, predictor = args.workdir / "profile", args.workdir / "predictor"
    failures = []

    def step(name: str, argv: list[str]) -> None:
        if run(name, argv, args.workdir):
            failures.append(name)

    if want("profiler"):
        step("bench_profiler", [PY, "benchmarks/bench_profiler.py", *quick])
    if want("predictor") or want("search") or want("digits") or want("whole") or want("sparse"):
        budget = "200" if args.quick else "1600"
        # 1 thread: on this shared 2-core VM a 2-thread pool (ExecuTorch's default here) turns small layers'
        # labels into scheduler noise (benchmarks/RESULTS.md, issue 9); on a phone keep the default.
        step("profile", [PY, "-m", "jcw", "profile", "--device", "local", "--out", str(profile), "--budget", budget,
                         "--threads", "1"])
        step("train", [PY, "-m", "jcw", "train", "--profile", str(profile), "--out", str(predictor)])
    if want("predictor"):
        curve = ["--curve", "100,200"] if args.quick else []
        step("bench_predictor", [PY, "benchmarks/bench_predictor.py", "--profile", str(profile), *curve])
        # issue 11: would more layers, or half of the unseen layers themselves, lift the unseen-architecture figure
        step("bench_unseen_ceiling", [PY, "benchmarks/bench_unseen_ceiling.py", "--profile", str(profile)])
    if want("search"):
        small = ["--seeds", "1", "--gens", "16"] if args.quick else []
        step("bench_search", [PY, "benchmarks/bench_search.py", "--predictor", str(predictor), *small])
    if want("digits"):
        small = ["--gens", "8", "--pop", "16"] if args.quick else []
        step("digits_joint_vs_single", [PY, "benchmarks/digits_joint_vs_single.py", "--predictor", str(predictor),
                                        *small])
    if want("whole"):
        step("bench_whole_program", [PY, "benchmarks/bench_whole_program.py", "--profile", str(profile),
                                     "--predictor", str(predictor), *(["--skip-resnet"] if args.quick else [])])
        step("bench_program_budget", [PY, "benchmarks/bench_program_budget.py", "--profile", str(profile),
                                      "--predictor", str(predictor)])
        step("bench_same_kernel", [PY, "benchmarks/bench_same_kernel.py", "--threads", "1",
                                   *(["--shapes", "4"] if args.quick else [])])
        # issue 11: the sparse engine runs a pruned k×k layer's gather + SpMM as fast as convbench measured it
        step("bench_same_kernel_sparse", [PY, "benchmarks/bench_same_kernel.py", "--sparse", "--threads", "1",
                                          *(["--shapes", "4"] if args.quick else [])])
    if want("bad-input"):
        step("bench_bad_input", [PY, "benchmarks/bench_bad_input.py"])
    if want("sparse"):  # issue 10: the sparse engine against the dense .pte, local then the emulated phone
        small = ["--models", "mobilenet_v1", "--densities", "0.1", "--resolution", "64", "--rounds", "1"]
        step("bench_sparse_engine", [PY, "benchmarks/bench_sparse_engine.py", *(small if args.quick else [])])
        step("bench_sparse_engine_phone", [PY, "benchmarks/bench_sparse_engine.py", "--device", "emulated",
                                           "--no-bad-input", *(small if args.quick else ["--resolution", "96",
                                                                                          "--rounds", "2"])])
        # joint vs width-only vs density-only on digits, measured on the engine, on the profile's predictor
        step("bench_digits_sparse", [PY, "benchmarks/bench_digits_sparse.py", "--predictor", str(predictor),
                                     "--out", str(args.workdir / "digits-sparse"),
                                     *(["--pop", "8", "--gens", "2", "--rounds", "1"] if args.quick
                                       else ["--pop", "32", "--gens", "40", "--budgets", "0.5,0.7,0.85"])])
    if want("adb"):
        step("bench_emulated_phone", [PY, "benchmarks/bench_emulated_phone.py",
                                      *(["--budget", "12", "--programs", "4"] if args.quick else [])])
        step("bench_push", [PY, "benchmarks/bench_push.py", *(["--mb", "4", "--rounds", "1"] if args.quick else [])])
        step("bench_harness_overhead", [PY, "benchmarks/bench_harness_overhead.py",
                                        *(["--lines", "8", "--rounds", "2"] if args.quick else [])])
    if want("lab"):  # issue 13: three emulated phones, sequential vs one host in parallel vs a local Ray cluster
        step("bench_lab", [PY, "benchmarks/bench_lab.py", *(["--no-ray"] if args.quick else [])])
    if want("layerbatch"):  # issue 12: LayerBatch against the column copies it replaced
        step("bench_layerbatch", [PY, "benchmarks/bench_layerbatch.py", *(["--repeats", "3"] if args.quick else [])])
    print("\nall benchmarks done" if not failures else f"\nfailed: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
