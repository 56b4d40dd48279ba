"""Every `jcw` command against a table of bad inputs (issue 14): damaged, empty and foreign profiles, a
profile another run holds, runner limits, sizes no machine holds, output paths that cannot be written
(an immutable directory, a 300-character name), malformed runs. For each: a non-zero exit, exactly one
sentence on stderr and no traceback, and nothing the user already had changed (the files' hashes, and
the good profile's ProfileStore.fingerprint).

The table (CASES) and the world it runs in (build_world) are shared with benchmarks/bench_bad_input.py,
which prints per command how many bad inputs give one sentence and how many lose data.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--runner-arg=--min-time-ms=1", "--runner-arg=--min-reps=1", "--holdout", "0", "--rounds", "1"]
GOOD_LAYER = {"op": "conv", "cin": 8, "cout": 8, "k": 3, "stride": 1, "pad": 1, "h": 8, "w": 8, "density": 1.0}
LONG = "n" * 300  # one folder or file name longer than any Linux file system allows (255 bytes)
#: Lines that may come before the one sentence: the countdown while a phone waits for its owner.
NOTICES = ("waiting for you to allow USB debugging",)


def jcw(*argv, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jcw", *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def file_hash(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def tree_hash(path: Path) -> str | None:
    """Hash of a file, or of a directory's files (names and content; SQLite's -wal/-shm side files aside)."""
    if path.is_file():
        return file_hash(path)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.endswith(("-wal", "-shm"))):
        digest.update(f"{item.relative_to(path)}={file_hash(item)};".encode())
    return digest.hexdigest()


def fingerprint(profile: Path) -> str | None:
    """ProfileStore.fingerprint of a sound profile (None for one that does not open)."""
    from jcw.profiler.store import ProfileStore, StoreError
    try:
        with ProfileStore(profile, readonly=True) as store:
            return store.fingerprint()
    except StoreError:
        return None


# ---- the world the bad inputs are tried in --------------------------------------------------------
def deny_writes(directory: Path) -> Callable[[], None]:
    """Make a directory unwritable for real, root included (immutable: chattr +i), else mode 0555.
    Returns the undo; raises RuntimeError when neither works here."""
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", str(directory)], capture_output=True).returncode:
            raise RuntimeError("cannot make a directory unwritable for root here (no chattr +i)")
        undo = lambda: subprocess.run([chattr, "-i", str(directory)], capture_output=True)  # noqa: E731
    else:
        directory.chmod(0o555)
        undo = lambda: directory.chmod(0o755)  # noqa: E731
    try:
        (directory / "probe").write_text("x")
    except OSError:
        return undo
    (directory / "probe").unlink()
    undo()
    raise RuntimeError("the directory stayed writable")


def flip_middle(source: Path, target: Path, count: int = 200) -> Path:
    """A copy of a profile with `count` bytes flipped in the middle of its database, from the start of the
    middle page (its b-tree header and cell pointers: damage SQLite can see; 200 flipped bytes in a page's
    free space change no data at all, and flipped bytes inside a stored number no file format can see)."""
    target.mkdir(parents=True)
    data = bytearray((source / "profile.sqlite").read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    middle = (len(data) // page // 2) * page
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    (target / "profile.sqlite").write_bytes(bytes(data))
    return target


@dataclass
class World:
    root: Path
    profile: Path
    big_profile: Path
    predictor: Path
    run: Path
    layers: Path
    locked: Path
    unwritable: Path
    undo: list[Callable[[], None]] = field(default_factory=list)
    holder: subprocess.Popen | None = None

    def close(self) -> None:
        if self.holder is not None and self.holder.poll() is None:
            self.holder.kill()
            self.holder.wait()
        for undo in self.undo:
            undo()


def build_world(root: Path) -> World:
    """A tiny real profile, a larger one (so 200 flipped bytes land inside a table), a predictor, a search
    run, and the damaged, empty, foreign, locked and unwritable things the cases point at."""
    profile, big = root / "profile", root / "big_profile"
    for out, budget in ((profile, 12), (big, 60)):
        proc = jcw("profile", "--device", "local", "--out", out, "--budget", budget, "--programs", "0", *FAST)
        if proc.returncode != 0:
            raise RuntimeError(f"could not make a profile (is the host runner built?): {proc.stderr[-2000:]}")
    predictor = root / "predictor"
    proc = jcw("train", "--profile", profile, "--out", predictor, "--model", "linear")
    if proc.returncode != 0:
        raise RuntimeError(f"could not train: {proc.stderr[-2000:]}")
    run = root / "run"
    proc = jcw("search", "--predictor", predictor, "--model", "digits", "--pop", "4", "--gens", "1", "--out", run)
    if proc.returncode != 0:
        raise RuntimeError(f"could not search: {proc.stderr[-2000:]}")
    layers = root / "layers.jsonl"
    layers.write_text(json.dumps(GOOD_LAYER) + "\n")

    flip_middle(big, root / "damaged")
    (root / "empty").mkdir()
    (root / "empty" / "profile.sqlite").write_bytes(b"")
    (root / "random").mkdir()
    (root / "random" / "profile.sqlite").write_bytes(os.urandom(8192))
    (root / "foreign").mkdir()
    db = sqlite3.connect(root / "foreign" / "profile.sqlite")
    db.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO photos(name) VALUES ('holiday')")
    db.commit()
    db.close()
    (root / "not_a_pte.pte").write_bytes(os.urandom(512))
    (root / "a_file").write_text("not a directory\n")

    huge_run = root / "huge_run"
    shutil.copytree(run, huge_run)
    meta = json.loads((huge_run / "run.json").read_text())
    (huge_run / "run.json").write_text(json.dumps({**meta, "input_shape": [1, 1, 100000, 100000]}))
    broken_run = root / "broken_run"
    shutil.copytree(run, broken_run)
    (broken_run / "front.json").write_text('[{"latency_ms": 1.0, "accuracy": 0.5, "genome": [')

    locked = root / "locked"
    shutil.copytree(profile, locked)
    world = World(root=root, profile=profile, big_profile=big, predictor=predictor, run=run, layers=layers,
                  locked=locked, unwritable=root / "unwritable")
    world.holder = subprocess.Popen(  # another "jcw profile" holding the lock of `locked`
        [sys.executable, "-c", "import sys, time\nfrom jcw.profiler.profile_lock import profile_lock\n"
                               "with profile_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(3600)\n",
         str(locked)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert world.holder.stdout.readline().strip() == "held"
    try:
        world.undo.append(deny_writes(world.unwritable))
    except RuntimeError:
        world.unwritable = None  # the cases that need it are skipped, saying why
    return world


# ---- the table -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    command: str
    name: str
    argv: Callable[[World], list]
    words: tuple[str, ...] = ()
    status: int | None = 2                       # None: any non-zero exit
    protect: Callable[[World], list] = lambda w: [w.profile, w.big_profile, w.predictor, w.run]
    needs_unwritable: bool = False

    @property
    def id(self) -> str:
        return f"{self.command}-{self.name}"


def _prof(out, *extra):
    return ["profile", "--device", "local", "--out", out, "--budget", "12", "--programs", "0", *FAST, *extra]


def _search(w, out, *extra):
    return ["search", "--predictor", w.predictor, "--model", "digits", "--pop", "4", "--gens", "1", "--out", out,
            *extra]


def _export(w, out, run=None):
    return ["export", "--run", run or w.run, "--pick", "1000", "--out", out, "--device", "host"]


CASES = [
    # profile
    Case("profile", "damaged-database", lambda w: _prof(w.root / "damaged"), ("damaged", "restore it from a backup"),
         protect=lambda w: [w.root / "damaged", w.profile]),
    Case("profile", "empty-database", lambda w: _prof(w.root / "empty"), ("empty", "0 bytes"),
         protect=lambda w: [w.root / "empty"]),
    Case("profile", "random-bytes", lambda w: _prof(w.root / "random"), ("not a readable profile database",),
         protect=lambda w: [w.root / "random"]),
    Case("profile", "foreign-sqlite", lambda w: _prof(w.root / "foreign"), ("not a jcw profile",),
         protect=lambda w: [w.root / "foreign"]),
    Case("profile", "locked", lambda w: _prof(w.locked), ("being measured by another", "PID", "on host"),
         protect=lambda w: [w.locked]),
    Case("profile", "threads-1000", lambda w: _prof(w.root / "never", "--threads", "1000"), ("--threads", "256")),
    Case("profile", "threads-0", lambda w: _prof(w.root / "never", "--threads", "0"), ("--threads",)),
    Case("profile", "budget-huge", lambda w: _prof(w.root / "never", "--budget", str(10 ** 12)), ("--budget",)),
    Case("profile", "programs-huge", lambda w: _prof(w.root / "never", "--programs", str(10 ** 9)), ("--programs",)),
    Case("profile", "rounds-huge", lambda w: ["profile", "--device", "local", "--out", w.root / "never",
                                              "--rounds", "100000"], ("--rounds",)),
    Case("profile", "out-unwritable", lambda w: _prof(w.unwritable / "p"), ("cannot create files",),
         needs_unwritable=True),
    Case("profile", "out-long-name", lambda w: _prof(w.root / LONG / "p"), ("longer than",)),
    Case("profile", "out-is-a-file", lambda w: _prof(w.root / "a_file"), ("not a directory",)),
    Case("profile", "csv-unwritable", lambda w: _prof(w.root / "never", "--csv", w.unwritable / "x.csv"),
         ("--csv", "cannot create files"), needs_unwritable=True),
    Case("profile", "csv-long-name", lambda w: _prof(w.root / "never", "--csv", w.root / (LONG + ".csv")),
         ("--csv", "longer than")),
    Case("profile", "runner-arg-value", lambda w: _prof(w.root / "never", "--runner-arg=--min-time-ms=-1"),
         ("--min-time-ms",)),
    Case("profile", "other-seed-rerun", lambda w: _prof(w.profile, "--seed", "7"), ("--seed",)),
    Case("profile", "bad-device", lambda w: ["profile", "--device", "nowhere:x:y", "--out", w.root / "never"],
         ("not a device address",)),
    # measure
    Case("measure", "threads-1000", lambda w: ["measure", "--device", "local", "--layers", w.layers, "--threads",
                                               "1000"], ("--threads", "256")),
    Case("measure", "layers-long-name", lambda w: ["measure", "--device", "local", "--layers", w.root / LONG],
         ("too long",)),
    Case("measure", "pte-long-name", lambda w: ["measure", "--device", "local", "--pte", w.root / (LONG + ".pte")],
         ("longer than",)),
    Case("measure", "pte-not-a-program", lambda w: ["measure", "--device", "local", "--pte", w.root / "not_a_pte.pte"],
         ("not an ExecuTorch program",)),
    Case("measure", "rounds-huge", lambda w: ["measure", "--device", "local", "--pte", w.root / "not_a_pte.pte",
                                              "--rounds", "100000"], ("--rounds",)),
    # train
    Case("train", "damaged-database", lambda w: ["train", "--profile", w.root / "damaged", "--out", w.root / "never"],
         ("damaged", "restore it from a backup"), protect=lambda w: [w.root / "damaged"]),
    Case("train", "empty-database", lambda w: ["train", "--profile", w.root / "empty", "--out", w.root / "never"],
         ("empty", "0 bytes"), protect=lambda w: [w.root / "empty"]),
    Case("train", "random-bytes", lambda w: ["train", "--profile", w.root / "random", "--out", w.root / "never"],
         ("not a readable profile database",), protect=lambda w: [w.root / "random"]),
    Case("train", "foreign-sqlite", lambda w: ["train", "--profile", w.root / "foreign", "--out", w.root / "never"],
         ("not a jcw profile",), protect=lambda w: [w.root / "foreign"]),
    Case("train", "profile-long-name", lambda w: ["train", "--profile", w.root / LONG, "--out", w.root / "never"],
         ()),
    Case("train", "threads-0", lambda w: ["train", "--profile", w.profile, "--out", w.root / "never", "--threads",
                                          "0"], ("--threads",)),
    # predict
    Case("predict", "predictor-long-name", lambda w: ["predict", "--predictor", w.root / LONG, "--layers", w.layers],
         ()),
    Case("predict", "layers-long-name", lambda w: ["predict", "--predictor", w.predictor, "--layers", w.root / LONG],
         ()),
    Case("predict", "predictor-is-a-damaged-profile", lambda w: ["predict", "--predictor", w.root / "damaged",
                                                                 "--layers", w.layers], (),
         protect=lambda w: [w.root / "damaged"]),
    # search
    Case("search", "out-unwritable", lambda w: _search(w, w.unwritable / "run"), ("cannot create files",),
         needs_unwritable=True),
    Case("search", "out-long-name", lambda w: _search(w, w.root / LONG), ("longer than",)),
    Case("search", "out-is-a-file", lambda w: _search(w, w.root / "a_file"), ("not a directory",)),
    Case("search", "pop-huge", lambda w: _search(w, w.root / "never", "--pop", "100000000"), ("--pop", "memory")),
    Case("search", "pop-negative", lambda w: _search(w, w.root / "never", "--pop", "-5"), ("--pop",)),
    Case("search", "gens-zero", lambda w: _search(w, w.root / "never", "--gens", "0"), ("--gens",)),
    Case("search", "input-shape-huge", lambda w: ["search", "--predictor", w.predictor, "--model", "resnet18",
                                                  "--input-shape", "1,3,100000,100000", "--out", w.root / "never"],
         ("input shape", "GB")),
    Case("search", "predictor-long-name", lambda w: ["search", "--predictor", w.root / LONG, "--model", "digits",
                                                     "--out", w.root / "never"], ()),
    # export
    Case("export", "out-unwritable", lambda w: _export(w, w.unwritable / "m.pte"), ("cannot create files",),
         needs_unwritable=True),
    Case("export", "out-long-file-name", lambda w: _export(w, w.root / (LONG + ".pte")), ("longer than",)),
    Case("export", "out-long-folder", lambda w: _export(w, w.root / LONG / "m.pte"), ("longer than",)),
    Case("export", "out-is-a-directory", lambda w: _export(w, w.root), ("is a directory",)),
    Case("export", "run-damaged-front", lambda w: _export(w, w.root / "m.pte", w.root / "broken_run"),
         ("cannot read search run",), protect=lambda w: [w.root / "broken_run", w.run]),
    Case("export", "run-huge-input", lambda w: _export(w, w.root / "m.pte", w.root / "huge_run"),
         ("input shape", "GB"), protect=lambda w: [w.root / "huge_run", w.run]),
    Case("export", "run-long-name", lambda w: _export(w, w.root / "m.pte", w.root / LONG), ()),
    # devices
    Case("devices", "bad-port", lambda w: ["devices", "--add", "tcp:host:99999"], ("99999",)),
    Case("devices", "long-host", lambda w: ["devices", "--add", f"tcp:{'h' * 300}:5555"], ("not a device address",)),
]


@dataclass
class Outcome:
    one_sentence: bool
    lost_data: bool
    detail: str
    skipped: str | None = None
    sentence: str = ""


def run_case(world: World, case: Case) -> Outcome:
    """Run one bad input; judge the output (one sentence, the right exit) and the data (hashes unchanged)."""
    if case.needs_unwritable and world.unwritable is None:
        return Outcome(True, False, "", skipped="cannot make a directory unwritable on this machine")
    protected = [Path(p) for p in case.protect(world)]
    before = {p: tree_hash(p) for p in protected}
    prints = {p: fingerprint(p) for p in protected if (p / "profile.sqlite").is_file()}
    proc = jcw(*case.argv(world))
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(NOTICES)]
    problems = []
    if proc.returncode == 0 or (case.status is not None and proc.returncode != case.status):
        problems.append(f"exit status {proc.returncode} (expected {case.status or 'non-zero'})")
    if "Traceback" in proc.stderr:
        problems.append("a traceback")
    if len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr")
    elif not lines[0].startswith(f"jcw {case.command}: "):
        problems.append("the line does not start with the command")
    else:
        problems += [f"missing {word!r}" for word in case.words if word not in lines[0]]
    lost = [str(p) for p in protected if tree_hash(p) != before[p]]
    lost += [f"{p} (fingerprint)" for p, value in prints.items() if fingerprint(p) != value]
    detail = "; ".join(problems + [f"changed {', '.join(lost)}"] if lost else problems)
    return Outcome(not problems, bool(lost), f"{detail} | stderr: {proc.stderr[-1500:]}" if detail else "",
                   sentence=lines[-1] if lines else "")


# ---- the tests -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    made = build_world(tmp_path_factory.mktemp("fuzz"))
    yield made
    made.close()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_sentence_and_loses_nothing(world, case):
    outcome = run_case(world, case)
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    assert outcome.one_sentence and not outcome.lost_data, outcome.detail


def test_every_command_is_in_the_table():
    commands = {c.command for c in CASES}
    assert commands >= {"profile", "measure", "train", "predict", "search", "export", "devices"}


def test_interrupted_search_writes_the_front_so_far(world, tmp_path):
    """Ctrl-C in a long search: exit 130, one sentence saying where, and the front of the last finished
    generation written (run.json says interrupted)."""
    out = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "jcw", "search", "--predictor", str(world.predictor), "--model",
                             "digits", "--pop", "8", "--gens", "1000000", "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out.is_dir() and proc.poll() is None):
        time.sleep(0.2)
    time.sleep(6)  # some generations
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "interrupted after generation" in lines[0] and str(out) in lines[0] and "front so far" in lines[0]
    meta = json.loads((out / "run.json").read_text())
    front = json.loads((out / "front.json").read_text())
    assert meta["interrupted"] is True and meta["generations_done"] >= 1 and len(front) >= 1


def test_search_interrupted_before_a_generation_leaves_no_directory(world, tmp_path):
    out = tmp_path / "deep" / "never"
    proc = subprocess.Popen([sys.executable, "-m", "jcw", "search", "--predictor", str(world.predictor), "--model",
                             "resnet50", "--pop", "4000", "--gens", "1", "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not out.is_dir() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len([line for line in err.splitlines() if line.strip()]) == 1, err
    assert not out.exists() and not out.parent.exists()
