"""The profile store under damage and restrictions (issue 14): a damaged, empty or foreign database is
one StoreDamaged sentence and stays byte for byte as it was; a store that cannot be written is
StoreNotWritable, told apart from damage; readonly=True (URI mode=ro) never writes, and a profile on a
read-only directory still reads; one `jcw profile` per directory, the lock naming its holder."""
from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from jcw.profiler.layerspec import LayerSpec
from jcw.profiler.profile_lock import LOCK_NAME, lock_holder, profile_lock
from jcw.profiler.store import (
    DB_NAME,
    ProfileLocked,
    ProfileStore,
    StoreDamaged,
    StoreError,
    StoreNotWritable,
    config_id,
)
from test_fuzz_cli import deny_writes, flip_middle

ROOT = Path(__file__).resolve().parent.parent
LAYERS = [LayerSpec(op="conv", cin=8 + i, cout=16, k=3, h=14, w=14) for i in range(200)]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def profile(tmp_path):
    """A store with a few hundred rows: big enough that the middle of the file is inside a table."""
    path = tmp_path / "good"
    with ProfileStore(path, create=True) as store:
        store.add_plan([(spec, "dense", 1, "prior") for spec in LAYERS])
        for i, spec in enumerate(LAYERS):
            for r in range(3):
                store.record(config_id(spec, "dense", 1), r, {"us_min": 100.0 + i + r, "us_median": 101.0 + i},
                             batch=r)
        store.set_meta("runner", {"version": "x"})
    return path


@pytest.fixture
def unwritable(tmp_path):
    undo = []

    def make(directory: Path) -> Path:
        try:
            undo.append(deny_writes(directory))
        except RuntimeError as exc:
            pytest.skip(str(exc))
        return directory
    yield make
    for step in reversed(undo):
        step()


@pytest.mark.parametrize("readonly", [False, True])
def test_a_damaged_database_is_one_sentence_and_left_as_it_was(profile, tmp_path, readonly):
    damaged = flip_middle(profile, tmp_path / "damaged")
    before = sha(damaged / DB_NAME)
    with pytest.raises(StoreDamaged, match="is damaged .*restore it from a backup, or move it aside") as info:
        ProfileStore(damaged, readonly=readonly)
    assert "\n" not in str(info.value) and "not a readable profile database" in str(info.value)
    assert sha(damaged / DB_NAME) == before
    with pytest.raises(StoreDamaged):
        ProfileStore(damaged, create=True)  # `jcw profile` refuses it too, before writing anything
    assert sha(damaged / DB_NAME) == before


def test_an_empty_file_is_damage_not_a_new_profile(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / DB_NAME).write_bytes(b"")
    for kwargs in ({}, {"readonly": True}, {"create": True}):
        with pytest.raises(StoreDamaged, match=r"empty, 0 bytes"):
            ProfileStore(tmp_path / "p", **kwargs)
    assert (tmp_path / "p" / DB_NAME).stat().st_size == 0


def test_a_foreign_sqlite_database_is_not_adopted(tmp_path):
    (tmp_path / "p").mkdir()
    db = sqlite3.connect(tmp_path / "p" / DB_NAME)
    db.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
    db.commit()
    db.close()
    before = sha(tmp_path / "p" / DB_NAME)
    for kwargs in ({}, {"readonly": True}, {"create": True}):
        with pytest.raises(StoreDamaged, match="not a jcw profile"):
            ProfileStore(tmp_path / "p", **kwargs)
    assert sha(tmp_path / "p" / DB_NAME) == before


def test_damage_found_only_when_reading_is_still_one_sentence(profile):
    """A page damaged where the structural check does not look: the query that meets it says so."""
    with ProfileStore(profile, readonly=True) as store:
        store._db.close()
        store._db = sqlite3.connect(":memory:")  # stands for a connection whose next read fails
        store._db.execute("CREATE TABLE plan (x)")
        with pytest.raises(StoreDamaged, match="lacks jcw's tables"):
            store.rounds()


def test_readonly_never_writes_and_refuses_writes(profile):
    before = sha(profile / DB_NAME)
    with ProfileStore(profile, readonly=True) as store:
        assert store.readonly
        fingerprint = store.fingerprint()
        assert len(store.measurements()) == len(LAYERS)
        with pytest.raises(StoreNotWritable, match="read-only"):
            store.set_meta("x", 1)
        with pytest.raises(StoreNotWritable):
            store.record(config_id(LAYERS[0], "dense", 1), 9, {"us_min": 1.0}, batch=9)
    assert sha(profile / DB_NAME) == before
    with ProfileStore(profile) as store:
        assert store.fingerprint() == fingerprint and not store.readonly


def test_readonly_reads_an_old_profile_without_program_tables(profile):
    db = sqlite3.connect(profile / DB_NAME)
    db.execute("DROP TABLE program_measurement")
    db.execute("DROP TABLE program")
    db.commit()
    db.close()
    before = sha(profile / DB_NAME)
    with ProfileStore(profile, readonly=True) as store:
        assert store.programs() == [] and store.program_measurements() == []
        assert len(store.measurements()) == len(LAYERS)
    assert sha(profile / DB_NAME) == before


def test_a_profile_in_a_read_only_directory_reads(profile, unwritable):
    """Root included (an immutable directory): mode=ro cannot make the WAL side files, immutable=1 reads."""
    before = sha(profile / DB_NAME)
    unwritable(profile)
    with ProfileStore(profile, readonly=True) as store:
        assert len(store.measurements()) == len(LAYERS)
    with ProfileStore(profile) as store:  # without readonly: falls back to reading, says so on a write
        assert store.readonly and len(store.measurements()) == len(LAYERS)
        with pytest.raises(StoreNotWritable, match="read-only"):
            store.set_meta("x", 1)
    with pytest.raises(StoreNotWritable):
        ProfileStore(profile, create=True)  # `jcw profile` needs to write: told, not "damaged"
    assert sha(profile / DB_NAME) == before


def test_cannot_create_here_is_not_damage(tmp_path, unwritable):
    parent = unwritable(tmp_path / "locked_parent")
    with pytest.raises(StoreNotWritable, match="cannot create profile directory") as info:
        ProfileStore(parent / "p", create=True)
    assert not isinstance(info.value, StoreDamaged)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreNotWritable, match="cannot create profile directory"):
        ProfileStore(tmp_path / "file" / "sub", create=True)
    with pytest.raises(StoreError, match="no profile at"):
        ProfileStore(tmp_path / "nothing")
    with pytest.raises(StoreError, match="cannot read the profile"):
        ProfileStore(tmp_path / ("n" * 300))


def test_a_new_profile_is_never_left_half_made(tmp_path):
    with ProfileStore(tmp_path / "p", create=True) as store:
        assert store.get_meta("schema_version") == 1
    assert sorted(os.listdir(tmp_path / "p")) == [DB_NAME]  # the temporary file was linked, then removed


# ---- the lock ----------------------------------------------------------------------------------------
def test_the_lock_is_reentrant_and_tidy(tmp_path):
    target = tmp_path / "a" / "b"
    with profile_lock(target):
        assert lock_holder(target)["pid"] == os.getpid()
        with profile_lock(target):  # the same process: profile() inside `jcw profile`'s own lock
            pass
        assert (target / LOCK_NAME).exists()
    assert not (tmp_path / "a").exists()  # made for nothing, removed again
    with profile_lock(target):
        (target / DB_NAME).write_bytes(b"x")
    assert sorted(os.listdir(target)) == [DB_NAME]


def test_a_second_holder_is_refused_and_a_killed_one_leaves_no_stale_lock(tmp_path):
    target = tmp_path / "p"
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time\nfrom jcw.profiler.profile_lock import profile_lock\n"
                               "with profile_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n",
                               str(target)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ProfileLocked, match=f"PID {holder.pid} on host {os.uname().nodename}"):
            with profile_lock(target):
                pass
    finally:
        holder.kill()  # SIGKILL: no clean-up ran, the lock file with its PID stays behind
        holder.wait()
    assert lock_holder(target)["pid"] == holder.pid
    with profile_lock(target):  # the kernel dropped the lock with the process
        assert lock_holder(target)["pid"] == os.getpid()
