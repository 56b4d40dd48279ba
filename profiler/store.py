"""The profile store: what one profile directory's database holds (`profiler.store_file` opens it).

Owns the planned configurations and whole programs, every measured round (committed as it streams
in, so Ctrl-C or a dead runner loses nothing reported), device facts, runner headers, drift
reference timings, the per-configuration and per-program aggregates the predictor trains on and CSV export
(the lock that keeps one `jcw profile` per directory is `profiler.profile_lock`).
"""
from __future__ import annotations

import csv
import hashlib
import json
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jcw.profiler import programs
from jcw.profiler.layerspec import SPEC_FIELDS, LayerSpec
from jcw.profiler.store_file import (  # noqa: F401  (the store's errors, importable from here)
    DB_NAME,
    ProfileDatabase,
    ProfileLocked,
    StoreBusy,
    StoreDamaged,
    StoreError,
    StoreNotWritable,
    guard_methods,
)

#: How a configuration's rounds become one latency (see measurements()). On a shared or throttling
#: device noise only ever slows a run down, so the fastest repetition of a round (us_min) and the
#: fastest round repeat best; benchmarks/bench_profiler.py measures every combination side by side.
ROUND_STATISTIC = "us_min"
ROUND_AGGREGATE = "min"
_AGGREGATES = {"min": min, "median": statistics.median}
#: Program samples: trained on, held out (families seen in training), and unseen families.
PROGRAM_SAMPLES = ("train", "holdout", "unseen")
#: The runtimes a program is measured on: part of its identity (programs.program_id). A profile made before
#: the sparse runtime has no `runtime` column; its programs read as "executorch" (the column's default).
PROGRAM_RUNTIMES = ("executorch", "sparse")


def config_id(spec: LayerSpec, impl: str, threads: int) -> str:
    """Identity of one measured configuration: the spec, the implementation and the thread count."""
    return f"{spec.key()}|{impl}|t{threads}"


class ProfileStore(ProfileDatabase):
    """A profile directory. Use as a context manager; every write commits at once."""

    # ---- the plan ------------------------------------------------------------------------
    def add_plan(self, entries: Iterable[tuple[LayerSpec, str, int, str]]) -> int:
        """Add (spec, impl, threads, sample) configurations; known ones are kept as they are.

        Returns how many were new.
        """
        start = self._db.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM plan").fetchone()[0]
        rows = []
        for offset, (spec, impl, threads, sample) in enumerate(entries):
            rows.append((config_id(spec, impl, threads), *(getattr(spec, f) for f in SPEC_FIELDS),
                         impl, int(threads), sample, start + offset))
        with self._db:
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO plan(config_id, op, cin, cout, k, stride, pad, h, w, density, impl, threads,"
                " sample, position) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            return self._db.total_changes - before

    def plan(self, sample: str | None = None) -> list[dict[str, Any]]:
        """Planned configurations in plan order, as dicts (spec fields, impl, threads, sample, config_id)."""
        query = "SELECT * FROM plan" + (" WHERE sample = ?" if sample else "") + " ORDER BY position"
        return self._rows(query, (sample,) if sample else ())

    def pending(self, round_index: int) -> list[dict[str, Any]]:
        """Planned configurations that have no result (measurement or error) for this round."""
        return self._rows(
            "SELECT p.* FROM plan p WHERE NOT EXISTS (SELECT 1 FROM measurement m"
            " WHERE m.config_id = p.config_id AND m.round = ?) ORDER BY p.position", (round_index,))

    # ---- results -------------------------------------------------------------------------
    def record(self, config: str, round_index: int, result: dict[str, Any], batch: int) -> None:
        """Store one runner result line (a measurement or an error) for one round; commits at once."""
        values = [result.get(f) for f in ("us_min", "us_median", "us_mean", "us_std", "reps",
                                          "max_abs_err", "timed_us")]
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO measurement(config_id, round, us_min, us_median, us_mean, us_std, reps,"
                " max_abs_err, timed_us, error, batch, measured_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (config, round_index, *values, result.get("error"), batch, time.time()))

    def flag_drift(self, batch: int, deviation: float | None = None) -> None:
        """Mark every measurement of a batch as taken while the reference layer drifted.

        The flag is also kept per batch, so it survives the re-measurement that replaces the rows.
        """
        with self._db:
            self._db.execute("UPDATE measurement SET drift = 1 WHERE batch = ?", (batch,))
            self._db.execute("INSERT OR REPLACE INTO drift(batch, deviation, flagged_at) VALUES (?,?,?)",
                             (batch, deviation, time.time()))

    def drift_batches(self) -> list[dict[str, Any]]:
        """Every batch ever flagged for drift, with the reference deviation that flagged it."""
        return self._rows("SELECT * FROM drift ORDER BY batch")

    def record_reference(self, batch: int, result: dict[str, Any]) -> None:
        with self._db:
            self._db.execute("INSERT INTO reference(batch, measured_at, us_min, us_median) VALUES (?,?,?,?)",
                             (batch, time.time(), result.get("us_min"), result.get("us_median")))

    def references(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM reference ORDER BY measured_at")

    def next_batch_number(self) -> int:
        return max(self._db.execute(f"SELECT COALESCE(MAX(batch), -1) + 1 FROM {table}").fetchone()[0]
                   for table in ("measurement", "reference", "program_measurement"))

    def rounds(self) -> list[dict[str, Any]]:
        """Every stored round joined with its configuration, in measurement order."""
        return self._rows("SELECT p.*, m.round, m.us_min, m.us_median, m.us_mean, m.us_std, m.reps, m.max_abs_err,"
                          " m.timed_us, m.error, m.batch, m.measured_at, m.drift"
                          " FROM measurement m JOIN plan p USING (config_id) ORDER BY m.measured_at")

    def measurements(self, sample: str | None = None, statistic: str = ROUND_STATISTIC,
                     aggregate: str = ROUND_AGGREGATE) -> list[dict[str, Any]]:
        """One row per configuration with at least one good round.

        `latency_us` aggregates (`aggregate`: min or median) the per-round `statistic` over the
        rounds without drift when there are any; `rounds` counts the rounds used, `spread` is
        (max - min) / median over those rounds, `round_latencies` lists all rounds in round order,
        `drift` is true when every round was taken during drift.
        """
        if statistic not in ("us_min", "us_median", "us_mean"):
            raise ValueError(f"statistic must be us_min, us_median or us_mean, got {statistic!r}")
        if aggregate not in _AGGREGATES:
            raise ValueError(f"aggregate must be one of {', '.join(_AGGREGATES)}, got {aggregate!r}")
        by_config: dict[str, dict[str, Any]] = {}
        for row in self.rounds():
            if row["error"] is not None or row[statistic] is None:
                continue
            if sample is not None and row["sample"] != sample:
                continue
            entry = by_config.setdefault(row["config_id"], {**{k: row[k] for k in (
                "config_id", *SPEC_FIELDS, "impl", "threads", "sample")}, "_rounds": []})
            entry["_rounds"].append((row["round"], row[statistic], row["drift"]))
        out = []
        for entry in by_config.values():
            rounds = sorted(entry.pop("_rounds"))
            clean = [r for r in rounds if not r[2]] or rounds
            values = [v for _, v, _ in clean]
            median = statistics.median(values)
            entry.update(latency_us=_AGGREGATES[aggregate](values), rounds=len(values),
                         spread=(max(values) - min(values)) / median if median > 0 else 0.0,
                         round_latencies=[v for _, v, _ in rounds],
                         drift=all(r[2] for r in rounds))
            out.append(entry)
        return out

    def errors(self) -> list[dict[str, Any]]:
        return [r for r in self.rounds() if r["error"] is not None]

    def fingerprint(self) -> str:
        """SHA-256 of the aggregated measurements, layers and programs: identifies the data a predictor
        was trained on (a profile without programs keeps the fingerprint it always had)."""
        digest = hashlib.sha256()
        for row in sorted(self.measurements(), key=lambda r: r["config_id"]):
            digest.update(f"{row['config_id']}={row['latency_us']:.6g};".encode())
        for row in sorted(self.program_measurements(), key=lambda r: r["program_id"]):
            digest.update(f"program:{row['program_id']}:{row['sample']}={row['latency_us']:.6g};".encode())
        return digest.hexdigest()

    # ---- whole programs (program specs, profiler/programs.py) ----------------------------
    def add_programs(self, entries: Iterable[tuple[dict[str, Any], str, int]], runtime: str = "executorch") -> int:
        """Add (program spec, sample, threads) entries to measure on `runtime`; known programs are kept as they are.

        The spec is validated and stored as canonical JSON; its id is programs.program_id(spec, threads,
        runtime), so one spec measured on both runtimes is two programs. Returns how many were new.
        """
        if runtime not in PROGRAM_RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(PROGRAM_RUNTIMES)}, got {runtime!r}")
        start = self._db.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM program").fetchone()[0]
        rows = []
        for offset, (spec, sample, threads) in enumerate(entries):
            if sample not in PROGRAM_SAMPLES:
                raise ValueError(f"program sample must be one of {', '.join(PROGRAM_SAMPLES)}, got {sample!r}")
            spec = programs.validate(spec)
            rows.append((programs.program_id(spec, int(threads), runtime), spec["name"], spec["family"], sample,
                         int(threads), programs.canonical_json(spec), start + offset, runtime))
        with self._db:
            before = self._db.total_changes
            self._db.executemany("INSERT OR IGNORE INTO program(program_id, name, family, sample, threads, spec,"
                                 " position, runtime) VALUES (?,?,?,?,?,?,?,?)", rows)
            return self._db.total_changes - before

    def programs(self, sample: str | None = None, runtime: str | None = None) -> list[dict[str, Any]]:
        """Planned programs in plan order ("spec" as a dict, "undelegated_ops" as a list or None), of one
        sample and one runtime when given."""
        query = "SELECT * FROM program" + (" WHERE sample = ?" if sample else "") + " ORDER BY position"
        rows = [_program_row(r) for r in self._rows(query, (sample,) if sample else ())]
        return [r for r in rows if runtime is None or r["runtime"] == runtime]

    def set_program_export(self, program_id: str, partitions: int | None,
                           undelegated_ops: list[str] | None = None) -> None:
        """What the host export of a program reported: XNNPACK partitions and operators left undelegated."""
        with self._db:
            self._db.execute("UPDATE program SET partitions = ?, undelegated_ops = ? WHERE program_id = ?",
                             (partitions, None if undelegated_ops is None else json.dumps(list(undelegated_ops)),
                              program_id))

    def pending_programs(self, round_index: int) -> list[dict[str, Any]]:
        """Planned programs that have no result (measurement or error) for this round."""
        return [_program_row(r) for r in self._rows(
            "SELECT p.* FROM program p WHERE NOT EXISTS (SELECT 1 FROM program_measurement m"
            " WHERE m.program_id = p.program_id AND m.round = ?) ORDER BY p.position", (round_index,))]

    def record_program(self, program_id: str, round_index: int, result: dict[str, Any], batch: int) -> None:
        """Store one .pte runner result (a measurement or an error) for one round; commits at once."""
        values = [result.get(f) for f in ("us_min", "us_median", "us_mean", "us_std", "reps", "timed_us")]
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO program_measurement(program_id, round, us_min, us_median, us_mean, us_std,"
                " reps, timed_us, error, batch, measured_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (program_id, round_index, *values, result.get("error"), batch, time.time()))

    def program_rounds(self) -> list[dict[str, Any]]:
        """Every stored program round joined with its program, in measurement order."""
        return [_program_row(r) for r in self._rows(
            "SELECT p.*, m.round, m.us_min, m.us_median, m.us_mean, m.us_std, m.reps, m.timed_us, m.error, m.batch,"
            " m.measured_at FROM program_measurement m JOIN program p USING (program_id) ORDER BY m.measured_at")]

    def program_measurements(self, sample: str | None = None, runtime: str | None = None) -> list[dict[str, Any]]:
        """One row per program with at least one good round, in plan order (of one sample and runtime when given).

        `latency_us` is the fastest round's us_min (ROUND_STATISTIC aggregated by ROUND_AGGREGATE, as
        for layers), `us_median` the median over rounds of each round's us_median, `rounds` the
        rounds used, `round_latencies` every good round's us_min in round order, `spread` their
        (max - min) / median.
        """
        by_program: dict[str, dict[str, Any]] = {}
        for row in self.program_rounds():
            if row["error"] is not None or row[ROUND_STATISTIC] is None:
                continue
            if (sample is not None and row["sample"] != sample) or (runtime is not None and row["runtime"] != runtime):
                continue
            entry = by_program.setdefault(row["program_id"], {**{k: row[k] for k in (
                "program_id", "name", "family", "sample", "threads", "spec", "partitions", "undelegated_ops",
                "position", "runtime")}, "_rounds": []})
            entry["_rounds"].append((row["round"], row[ROUND_STATISTIC], row["us_median"]))
        out = []
        for entry in sorted(by_program.values(), key=lambda e: e["position"]):
            rounds = sorted(entry.pop("_rounds"))
            del entry["position"]
            values = [v for _, v, _ in rounds]
            middle = statistics.median(values)
            medians = [m for _, _, m in rounds if m is not None]
            entry.update(latency_us=_AGGREGATES[ROUND_AGGREGATE](values),
                         us_median=statistics.median(medians) if medians else None, rounds=len(values),
                         round_latencies=values, spread=(max(values) - min(values)) / middle if middle > 0 else 0.0)
            out.append(entry)
        return out

    def program_errors(self) -> list[dict[str, Any]]:
        """Program rounds the runner (or the host export) reported an error for, like errors() for layers."""
        return [r for r in self.program_rounds() if r["error"] is not None]

    def export_csv(self, path: str | Path) -> int:
        """Write every round (errors included) as CSV; returns the number of rows."""
        rows = self.rounds()
        columns = ["config_id", *SPEC_FIELDS, "impl", "threads", "sample", "round", "us_min", "us_median",
                   "us_mean", "us_std", "reps", "max_abs_err", "timed_us", "error", "batch", "measured_at", "drift"]
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        return len(rows)

    def _rows(self, query: str, args: tuple = ()) -> list[dict[str, Any]]:
        cursor = self._db.execute(query, args)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]


guard_methods(ProfileStore, "_rows")


def _program_row(row: dict[str, Any]) -> dict[str, Any]:
    row.setdefault("runtime", "executorch")  # a read-only profile from before the column
    row["spec"] = json.loads(row["spec"])
    if row.get("undelegated_ops") is not None:
        row["undelegated_ops"] = json.loads(row["undelegated_ops"])
    return row
