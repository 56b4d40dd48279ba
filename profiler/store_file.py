"""Opening a profile's SQLite database (WAL) safely: the file checks, creation, connections and schema.

Every SQLite failure reaches the caller as one StoreError sentence: StoreDamaged (the file is not a
sound profile database: what to do), StoreNotWritable (the file or its directory cannot be created or
written: permissions, a read-only file system, a full disk) or StoreBusy. A database opened with
`readonly=True` (URI mode=ro) never writes, so a profile on a read-only medium can be trained from.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import sqlite3
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

SCHEMA_VERSION = 1
DB_NAME = "profile.sqlite"
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
    def guarded(self: ProfileDatabase, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise  # a bug (a closed store, a bad query), not the file's fault
        except sqlite3.Error as exc:
            raise self._sqlite_error(exc) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreDamaged(self._damaged(f"a stored value is unreadable: {exc}")) from None
    return guarded


class ProfileDatabase:
    """A profile directory's database, opened and checked; ProfileStore adds what is stored in it."""

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

    def __enter__(self) -> Self:
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


def guard_methods(cls: type, *private: str) -> None:
    """Wrap every public method `cls` defines (and the named private ones) but close() in _guarded."""
    for name, method in list(vars(cls).items()):
        if callable(method) and (not name.startswith("_") or name in private) and name != "close":
            setattr(cls, name, _guarded(method))


guard_methods(ProfileDatabase)
