"""The profile store: one SQLite database (WAL) per profile directory.

Owns the planned configurations, every measured round (committed as it streams in, so
Ctrl-C or a dead runner loses nothing reported), device facts, runner header, drift
reference timings, the per-configuration aggregate the predictor trains on, and CSV export.
"""
from __future__ import annotations

import csv
import hashlib
import json
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any, Iterable

from profiler.layerspec import SPEC_FIELDS, LayerSpec

SCHEMA_VERSION = 1
DB_NAME = "profile.sqlite"
#: How a configuration's rounds become one latency (see measurements()). On a shared or throttling
#: device noise only ever slows a run down, so the fastest repetition of a round (us_min) and the
#: fastest round repeat best; benchmarks/bench_profiler.py measures every combination side by side.
ROUND_STATISTIC = "us_min"
ROUND_AGGREGATE = "min"
_AGGREGATES = {"min": min, "median": statistics.median}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS plan (
    config_id TEXT PRIMARY KEY,
    op TEXT NOT NULL, cin INTEGER NOT NULL, cout INTEGER NOT NULL, k INTEGER NOT NULL,
    stride INTEGER NOT NULL, pad INTEGER NOT NULL, h INTEGER NOT NULL, w INTEGER NOT NULL,
    density REAL NOT NULL, impl TEXT NOT NULL, threads INTEGER NOT NULL,
    sample TEXT NOT NULL, position INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS measurement (
    config_id TEXT NOT NULL REFERENCES plan(config_id),
    round INTEGER NOT NULL,
    us_min REAL, us_median REAL, us_mean REAL, us_std REAL, reps INTEGER,
    max_abs_err REAL, timed_us REAL, error TEXT,
    batch INTEGER NOT NULL, measured_at REAL NOT NULL, drift INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (config_id, round)
);
CREATE TABLE IF NOT EXISTS reference (
    batch INTEGER NOT NULL, measured_at REAL NOT NULL, us_min REAL, us_median REAL
);
CREATE TABLE IF NOT EXISTS drift (
    batch INTEGER PRIMARY KEY, deviation REAL, flagged_at REAL NOT NULL
);
"""


class StoreError(Exception):
    """The profile directory is missing, unreadable or of another schema; one sentence."""


def config_id(spec: LayerSpec, impl: str, threads: int) -> str:
    """Identity of one measured configuration: the spec, the implementation and the thread count."""
    return f"{spec.key()}|{impl}|t{threads}"


class ProfileStore:
    """A profile directory. Use as a context manager; every write commits at once."""

    def __init__(self, directory: str | Path, *, create: bool = False) -> None:
        self.directory = Path(directory)
        self.path = self.directory / DB_NAME
        if not self.path.exists():
            if not create:
                raise StoreError(f"no profile at {self.directory} (expected {self.path}); run `jcw profile` first")
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create profile directory {self.directory}: {exc.strerror or exc}") from None
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a readable profile database ({exc})") from None
        version = self.get_meta("schema_version")
        if version is None:
            self.set_meta("schema_version", SCHEMA_VERSION)
        elif version != SCHEMA_VERSION:
            raise StoreError(f"profile {self.directory} has schema version {version}; this jcw reads {SCHEMA_VERSION}")

    # ---- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ProfileStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- metadata (device facts, runner header, plan parameters) ------------------------
    def set_meta(self, key: str, value: Any) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

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
        row = self._db.execute("SELECT COALESCE(MAX(batch), -1) + 1 FROM measurement").fetchone()
        ref = self._db.execute("SELECT COALESCE(MAX(batch), -1) + 1 FROM reference").fetchone()
        return max(row[0], ref[0])

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
        """SHA-256 of the aggregated measurements: identifies the data a predictor was trained on."""
        digest = hashlib.sha256()
        for row in sorted(self.measurements(), key=lambda r: r["config_id"]):
            digest.update(f"{row['config_id']}={row['latency_us']:.6g};".encode())
        return digest.hexdigest()

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
