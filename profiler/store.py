"""The profile store: one SQLite database (WAL) per profile directory.

Owns the planned configurations and whole programs, every measured round (committed as it streams
in, so Ctrl-C or a dead runner loses nothing reported), device facts, runner headers, drift
reference timings, the per-configuration and per-program aggregates the predictor trains on and CSV export
(the lock that keeps one `jcw profile` per directory is `profiler.profile_lock`).

Every SQLite failure reaches the caller as one StoreError sentence: StoreDamaged (the file is not a
sound profile database: what to do), StoreNotWritable (the file or its directory cannot be created or
written: permissions, a read-only file system, a full disk) or StoreBusy. A store opened with
`readonly=True` (URI mode=ro) never writes, so a profile on a read-only medium can be trained from.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import functools
import hashlib
import json
import os
import sqlite3
import statistics
import time
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from jcw.profiler import programs
from jcw.profiler.layerspec import SPEC_FIELDS, LayerSpec

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
CREATE TABLE IF NOT EXISTS program (
    program_id TEXT PRIMARY KEY, name TEXT NOT NULL, family TEXT NOT NULL, sample TEXT NOT NULL,
    threads INTEGER NOT NULL, spec TEXT NOT NULL, partitions INTEGER, undelegated_ops TEXT,
    position INTEGER NOT NULL, runtime TEXT NOT NULL DEFAULT 'executorch'
);
CREATE TABLE IF NOT EXISTS program_measurement (
    program_id TEXT NOT NULL REFERENCES program(program_id),
    round INTEGER NOT NULL,
    us_min REAL, us_median REAL, us_mean REAL, us_std REAL, reps INTEGER, timed_us REAL, error TEXT,
    batch INTEGER NOT NULL, measured_at REAL NOT NULL,
    PRIMARY KEY (program_id, round)
);
"""
#: Program samples: trained on, held out (families seen in training), and unseen families.
PROGRAM_SAMPLES = ("train", "holdout", "unseen")
#: The runtimes a program is measured on: part of its identity (programs.program_id). A profile made before
#: the sparse runtime has no `runtime` column; its programs read as "executorch" (the column's default).
PROGRAM_RUNTIMES = ("executorch", "sparse")


SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_S = 30.0
#: Tables every jcw profile has had since the first schema; the later ones are added when missing.
_CORE_TABLES = ("meta", "plan", "measurement")
_WHAT_TO_DO = ("jcw has left it as it is: restore it from a backup, or move it aside and run `jcw profile` "
               "again to measure anew")


class StoreError(Exception):
    """The profile directory is missing, unreadable or of another schema; one sentence."""


class StoreDamaged(StoreError):
    """The profile database is damaged (or not a profile database at all): what to do, in one sentence."""


class StoreNotWritable(StoreError):
    """The profile (its directory, database or side files) cannot be created or written here."""


class StoreBusy(StoreError):
    """Another process held the database's write lock for longer than BUSY_TIMEOUT_S."""


class ProfileLocked(StoreError):
    """Another `jcw profile` is measuring into the same directory; names its PID and host."""


def _reason(exc: OSError) -> str:
    from jcw.profiler.cliargs import os_error_reason  # the shared phrasing of OSErrors
    return os_error_reason(exc)


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every SQLite error (and a damaged stored value) of a store method into one StoreError."""
    @functools.wraps(method)
    def guarded(self: ProfileStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise  # a bug (a closed store, a bad query), not the file's fault
        except sqlite3.Error as exc:
            raise self._sqlite_error(exc) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreDamaged(self._damaged(f"a stored value is unreadable: {exc}")) from None
    return guarded


def config_id(spec: LayerSpec, impl: str, threads: int) -> str:
    """Identity of one measured configuration: the spec, the implementation and the thread count."""
    return f"{spec.key()}|{impl}|t{threads}"


class ProfileStore:
    """A profile directory. Use as a context manager; every write commits at once."""

    def __init__(self, directory: str | Path, *, create: bool = False, readonly: bool = False) -> None:
        """Open the profile in `directory`.

        create: make the directory and an empty profile when there is none (`jcw profile`).
        readonly: open with SQLite's URI mode=ro (immutable=1 when even the side files cannot be made, as
        on a read-only medium): nothing is ever written, every write raises StoreNotWritable.
        Without either, the store is opened for reading and writing when the files allow it and read-only
        otherwise, so a profile that cannot be written still reads. A damaged database is refused at once
        (StoreDamaged) before anything is written to it.
        """
        if create and readonly:
            raise ValueError("a store cannot be created read-only")
        self.directory = Path(directory)
        self.path = self.directory / DB_NAME
        self.readonly = readonly
        self._db: sqlite3.Connection | None = None
        if not self._inspect_file(create):
            self._create_database()
        if readonly:
            self._db = self._connect_readonly()
        else:
            try:
                self._db = self._connect_readwrite()
            except StoreNotWritable:
                if create:
                    raise
                self._db, self.readonly = self._connect_readonly(), True
        try:
            self._check_schema()
        except BaseException:
            self.close()
            raise

    # ---- opening -----------------------------------------------------------------------
    def _damaged(self, reason: str) -> str:
        return f"{self.path} is not a readable profile database: it is damaged ({reason.rstrip('.')}); {_WHAT_TO_DO}"

    def _foreign(self, what: str) -> str:
        return (f"{self.path} is not a readable profile database: it is an SQLite database but not a jcw profile "
                f"({what}); jcw has left it as it is: point at a directory made by `jcw profile`")

    def _sqlite_error(self, exc: sqlite3.Error) -> StoreError:
        """The one sentence for an SQLite error: damaged, cannot write here, or busy."""
        text = str(exc) or type(exc).__name__
        low = text.lower()
        if isinstance(exc, sqlite3.OperationalError):
            if "locked" in low or "busy" in low:
                return StoreBusy(f"profile {self.directory} stayed locked by another process for more than "
                                 f"{BUSY_TIMEOUT_S:g} s ({text}); try again once it is done")
            if "readonly" in low or "read-only" in low:
                return StoreNotWritable(f"cannot write the profile {self.directory}: it is read-only here (file "
                                        f"permissions or a read-only file system); reading it still works")
            if "unable to open" in low:
                return StoreNotWritable(f"cannot open the profile database {self.path}: SQLite cannot create its "
                                        f"side files (-wal, -shm) in that directory; check its permissions, or copy "
                                        f"the profile somewhere writable")
            if "full" in low:  # "database or disk is full"
                return StoreNotWritable(f"cannot write the profile {self.directory}: no space left on the device; "
                                        f"free some space and rerun (everything stored so far is kept)")
            if "i/o error" in low:
                return StoreNotWritable(f"cannot read or write the profile {self.directory}: the disk reported an "
                                        f"input/output error ({text}); check the disk, then restore the profile "
                                        f"from a backup if it was damaged")
            if "no such table" in low or "no such column" in low or "has no column" in low:
                return StoreDamaged(self._damaged(f"it lacks jcw's tables: {text}"))
        return StoreDamaged(self._damaged(text))

    def _inspect_file(self, create: bool) -> bool:
        """Whether the database file exists (and starts like an SQLite database); StoreError otherwise."""
        try:
            info = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            if not create:
                raise StoreError(f"no profile at {self.directory} (expected {self.path}); "
                                 f"run `jcw profile` first") from None
            return False
        except OSError as exc:
            from jcw.profiler.cliargs import short_path
            raise StoreError(f"cannot read the profile {short_path(self.directory)}: {_reason(exc)}") from None
        if not os.path.isfile(self.path):
            raise StoreError(f"{self.path} is not a file, so {self.directory} is not a profile directory")
        if info.st_size == 0:
            raise StoreDamaged(self._damaged("the file is empty, 0 bytes, as an interrupted copy or a full disk "
                                             "leaves it"))
        try:
            with open(self.path, "rb") as fh:
                head = fh.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise StoreError(f"cannot read the profile database {self.path}: {_reason(exc)}") from None
        if head != SQLITE_HEADER:
            raise StoreDamaged(self._damaged("file is not a database: it lacks the SQLite header"))
        return True

    def _create_database(self) -> None:
        """Create the directory and the database, initialised in a temporary file and then linked into
        place, so a crash never leaves a half-made (or 0-byte) profile.sqlite behind."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreNotWritable(f"cannot create profile directory {self.directory}: {_reason(exc)}") from None
        temp = self.directory / f".{DB_NAME}.{os.getpid()}.tmp"
        try:
            db = sqlite3.connect(temp)
            try:
                db.executescript(_SCHEMA)
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                           (json.dumps(SCHEMA_VERSION),))
                db.commit()
                db.execute("PRAGMA journal_mode=WAL")
            finally:
                db.close()
            try:
                os.link(temp, self.path)
            except FileExistsError:
                pass  # another process made it first: open theirs
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                if not self.path.exists():  # a file system without hard links
                    os.replace(temp, self.path)
        except sqlite3.Error as exc:
            raise StoreNotWritable(f"cannot create the profile database in {self.directory}: {exc}") from None
        except OSError as exc:
            raise StoreNotWritable(f"cannot create the profile database in {self.directory}: "
                                   f"{_reason(exc)}") from None
        finally:
            for leftover in (temp, *(temp.with_name(temp.name + s) for s in ("-journal", "-wal", "-shm"))):
                with contextlib.suppress(OSError):
                    leftover.unlink()

    def _uri(self, **params: str) -> str:
        return f"file:{urllib.parse.quote(str(self.path.absolute()))}?{urllib.parse.urlencode(params)}"

    def _quick_check(self, db: sqlite3.Connection) -> None:
        """StoreDamaged unless SQLite's structural check passes (linear in the file, milliseconds)."""
        try:
            rows = db.execute("PRAGMA quick_check(1)").fetchall()
        except sqlite3.Error as exc:
            raise self._sqlite_error(exc) from None
        if not rows or rows[0][0] != "ok":
            detail = " ".join(str(rows[0][0]).replace("*** in database main ***", "").split()) if rows \
                else "no answer from the check"
            raise StoreDamaged(self._damaged(detail))

    def _connect_readonly(self) -> sqlite3.Connection:
        db = None
        try:
            db = sqlite3.connect(self._uri(mode="ro"), uri=True, timeout=BUSY_TIMEOUT_S)
            self._quick_check(db)
            return db
        except StoreNotWritable:
            # mode=ro still needs the WAL side files; a read-only directory without them is read as immutable
            if db is not None:
                db.close()
            db = sqlite3.connect(self._uri(mode="ro", immutable="1"), uri=True, timeout=BUSY_TIMEOUT_S)
            try:
                self._quick_check(db)
            except BaseException:
                db.close()
                raise
            return db
        except BaseException:
            if db is not None:
                db.close()
            raise

    def _connect_readwrite(self) -> sqlite3.Connection:
        try:
            os.close(os.open(self.path, os.O_RDWR))  # SQLite would quietly open a write-protected file read-only
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ETXTBSY):
                raise StoreNotWritable(f"cannot write the profile {self.directory}: {_reason(exc)}") from None
            raise StoreError(f"cannot open the profile database {self.path}: {_reason(exc)}") from None
        db = sqlite3.connect(self._uri(mode="rw"), uri=True, timeout=BUSY_TIMEOUT_S)
        try:
            self._quick_check(db)  # before the first write: a damaged file is left exactly as it is
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "plan" not in tables and "meta" not in tables:
                raise StoreDamaged(self._foreign(f"its tables: {', '.join(sorted(tables)[:5])}"))
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            if "runtime" not in {r[1] for r in db.execute("PRAGMA table_info(program)")}:
                with db:  # a profile from before the sparse runtime: every program it holds is an ExecuTorch one
                    db.execute("ALTER TABLE program ADD COLUMN runtime TEXT NOT NULL DEFAULT 'executorch'")
        except sqlite3.Error as exc:
            db.close()
            raise self._sqlite_error(exc) from None
        except BaseException:
            db.close()
            raise
        return db

    @_guarded
    def _check_schema(self) -> None:
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if self.readonly:
            missing_core = [t for t in _CORE_TABLES if t not in tables]
            if missing_core:
                raise StoreDamaged(self._foreign(f"no {', '.join(missing_core)} table"))
            # tables added since (programs, drift, ...) read as empty, in memory: the file is not touched
            for statement in _SCHEMA.split(";"):
                words = statement.split()
                if len(words) > 5 and words[5] not in tables:
                    self._db.execute(statement.replace("CREATE TABLE IF NOT EXISTS", "CREATE TEMP TABLE", 1)
                                     .replace(" REFERENCES plan(config_id)", "")
                                     .replace(" REFERENCES program(program_id)", ""))
        version = self.get_meta("schema_version")
        if version is None and not self.readonly:
            self.set_meta("schema_version", SCHEMA_VERSION)
        elif version is not None and version != SCHEMA_VERSION:
            raise StoreError(f"profile {self.directory} has schema version {version}; this jcw reads {SCHEMA_VERSION}")

    # ---- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def __enter__(self) -> ProfileStore:
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


for _name, _method in list(vars(ProfileStore).items()):
    if callable(_method) and (not _name.startswith("_") or _name == "_rows") and _name != "close":
        setattr(ProfileStore, _name, _guarded(_method))
del _name, _method


def _program_row(row: dict[str, Any]) -> dict[str, Any]:
    row.setdefault("runtime", "executorch")  # a read-only profile from before the column
    row["spec"] = json.loads(row["spec"])
    if row.get("undelegated_ops") is not None:
        row["undelegated_ops"] = json.loads(row["undelegated_ops"])
    return row
