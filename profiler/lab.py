"""A device lab on one host: every phone profiled or measured by its own worker process, in parallel.

Owns naming a lab's phones (`--device all`, repeated `--device`), each phone's identity (serial, model) and
resumable profile directory, the worker processes, and what happens when a phone drops out: its worker is
started again (the store resumes) a few times, then the phone is reported while the others go on.
"""
from __future__ import annotations

import multiprocessing
import pickle
import re
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import connection
from pathlib import Path
from typing import Any

from jcw.android_harness.device import DeviceError, DeviceUsageError

#: How often a phone whose worker dropped out (device error, worker killed) gets a fresh worker by default.
DEFAULT_RECONNECTS = 2
#: Seconds before a dropped phone's first retry; doubled on each further one (a rebooting phone needs time).
RETRY_BACKOFF_S = 2.0
#: A worker reports progress at most this often, so a fast device does not flood the shared queue.
PROGRESS_INTERVAL_S = 0.25

_SERIAL = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")
#: Report = (done, total, description): what a worker tells the shared display.
Report = Callable[[int, int, str], None]


class LabUsageError(DeviceUsageError):
    """A lab named wrongly (an unknown serial, a phone named twice, no phone at all); one sentence."""


class LabUnreachable(DeviceError):
    """The lab's cluster cannot be reached or used; one sentence."""


@dataclass(frozen=True)
class PhoneId:
    """A phone of the lab: where to reach it and who it is."""
    address: str
    serial: str
    model: str

    @property
    def dir_name(self) -> str:
        """The phone's profile directory name, from its model and serial (e.g. `Pixel-7-2B1F0XYZ`)."""
        model = re.sub(r"[^A-Za-z0-9._-]+", "-", self.model).strip("-.") or "phone"
        return f"{model}-{self.serial}"


@dataclass
class PhoneJob:
    """One phone's share of a lab command: `kind` is "profile" (into `out_dir`) or "measure" (programs)."""
    phone: PhoneId
    kind: str
    out_dir: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PhoneOutcome:
    """How a phone's job ended: state "done", "dropped" (a device error: worth another worker) or "failed"."""
    serial: str
    state: str
    result: Any = None
    error: str = ""
    attempts: int = 1
    seconds: float = 0.0
    detail: str = ""  # the traceback of an error no stage phrased (a bug), for the report


# ---- naming the phones ----------------------------------------------------------------------------
def expand_devices(requested: Sequence[str], listed: list[dict[str, Any]] | None = None) -> list[str]:
    """The device addresses a lab command names, in order: `all` is every phone `jcw devices` lists as
    usable (USB phones with a serial, reachable TCP phones); a bare serial must be an attached USB phone.
    LabUsageError for an unknown serial, a phone named twice or a lab with no phone."""
    from jcw.android_harness.connect import parse_address
    if listed is None and any(text == "all" or not text.startswith(("tcp:", "usb:", "local")) for text in requested):
        from jcw.android_harness.discovery import list_devices
        listed = list_devices()
    listed = listed or []
    phones = [row["address"] for row in listed if row.get("kind") != "local" and row.get("address")
              and row.get("state") in ("ready", "reachable", "unchecked")]
    addresses: list[str] = []
    for text in requested:
        if text == "all":
            if not phones:
                raise LabUsageError("--device all found no phone on this host: attach one over USB or add a TCP "
                                    "phone with `jcw devices --add tcp:HOST:PORT`.")
            addresses.extend(phones)
            continue
        address = str(parse_address(text))
        if parse_address(text).kind == "usb" and address not in {str(parse_address(a)) for a in phones}:
            raise LabUsageError(f"no phone with serial {parse_address(text).serial!r} is attached to this host; "
                                f"`jcw devices` lists the ones that are.")
        addresses.append(address)
    check_named_once(addresses)
    return addresses


def check_named_once(phones: Sequence[str]) -> None:
    """LabUsageError for the first phone (address or serial) a lab command names twice."""
    seen: set[str] = set()
    for phone in phones:
        if phone in seen:
            raise LabUsageError(f"the phone {phone} is named twice; name each phone once, as each has one "
                                f"profile and one runner at a time.")
        seen.add(phone)


def phone_serial(device: Any) -> str:
    """The serial of an open device: a USB address names it, a TCP phone is asked (`getprop ro.serialno`)."""
    from jcw.android_harness.connect import parse_address
    address = parse_address(device.address)
    if address.kind == "usb":
        return address.serial
    if address.kind == "local":
        import socket
        return re.sub(r"[^A-Za-z0-9._-]+", "-", socket.gethostname()) or "local"
    shell = getattr(getattr(device, "_transport", None), "shell", None)  # the harness's ADB transport
    if shell is not None:
        try:
            _, output = shell("getprop ro.serialno")
        except Exception:  # an old phone or a flaky link: the address still identifies it
            output = ""
        serial = output.strip().splitlines()[-1].strip() if output.strip() else ""
        if _SERIAL.match(serial):
            return serial
    return f"{address.host}_{address.port}"


def identify(address: str) -> PhoneId:
    """Connect to one phone and read who it is (DeviceError if it cannot be reached)."""
    from jcw.profiler.session import open_device
    with open_device(address) as device:
        facts = device.facts()
        model = facts.get("model") or facts.get("cpu_model") or "phone"
        return PhoneId(address=device.address, serial=phone_serial(device), model=str(model))


def identify_all(addresses: Sequence[str]) -> list[PhoneId]:
    """Identify every phone at once (each connection waits on its own phone); LabUsageError when two
    addresses reach the same phone, the DeviceError of the first phone that cannot be reached."""
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(addresses)))) as pool:
        phones = list(pool.map(identify, addresses))
    by_serial: dict[str, PhoneId] = {}
    for phone in phones:
        if phone.serial in by_serial:
            raise LabUsageError(f"{by_serial[phone.serial].address} and {phone.address} are the same phone "
                                f"(serial {phone.serial}); name each phone once.")
        by_serial[phone.serial] = phone
    return phones


# ---- one phone's work (run in a worker process, here or on a Ray actor) ----------------------------
def profile_phone(job: PhoneJob, report: Report) -> dict[str, Any]:
    """Profile one phone into its own directory (resumable: a rerun measures only what is missing)."""
    from jcw.profiler import session

    def progress(done: int, total: int, info: dict[str, Any]) -> None:
        phase = info.get("phase")
        what = ("exporting programs" if phase == "export" else
                f"{'programs ' if phase == 'programs' else ''}round {info['round'] + 1}" if "round" in info
                else "profiling")
        report(done, total, what)

    with session.open_device(job.phone.address) as device:
        summary = session.profile(device, job.out_dir, progress=progress, **job.options)
    result = summary.as_dict()
    result["all_failed"] = summary.all_failed
    return result


def measure_phone(job: PhoneJob, report: Report) -> list[dict[str, Any]]:
    """Time the job's programs (`options`: paths, key "pte" or "net", threads, rounds, runner_args)."""
    from jcw.profiler import program_measure
    options = dict(job.options)
    paths = options.pop("paths")
    return program_measure.measure_programs(job.phone.address, paths,
                                            progress=lambda done, total, _: report(done, total, "measuring"),
                                            **options)


WORKS: dict[str, Callable[[PhoneJob, Report], Any]] = {"profile": profile_phone, "measure": measure_phone}


def run_job(job: PhoneJob, report: Report) -> PhoneOutcome:
    """One attempt at a phone's job, never raising: a device error is "dropped" (another attempt may
    finish it), bad input or a store that refuses is "failed" (another attempt would fail alike)."""
    from jcw.profiler.program_session import PteError
    from jcw.profiler.store import StoreError
    started = time.monotonic()
    try:
        result = WORKS[job.kind](job, report)
    except (DeviceUsageError, StoreError, PteError, ValueError) as exc:
        return PhoneOutcome(job.phone.serial, "failed", error=_sentence(exc), seconds=time.monotonic() - started)
    except DeviceError as exc:
        return PhoneOutcome(job.phone.serial, "dropped", error=_sentence(exc), seconds=time.monotonic() - started)
    except Exception as exc:  # the other phones go on; a bug keeps its traceback for the report
        return PhoneOutcome(job.phone.serial, "failed", error=_sentence(exc), detail=traceback.format_exc(),
                            seconds=time.monotonic() - started)
    return PhoneOutcome(job.phone.serial, "done", result=result, seconds=time.monotonic() - started)


def _sentence(exc: BaseException) -> str:
    return " ".join(str(exc).split()).rstrip(".") or type(exc).__name__


def _worker_main(job: PhoneJob, channel: Any) -> None:
    """A worker process: one phone, one attempt; progress and the outcome go to the parent over the worker's
    own pipe (a worker killed mid-write breaks only its own pipe, never the other phones' reports)."""
    last = [0.0]

    def report(done: int, total: int, what: str) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_INTERVAL_S or done >= total:
            last[0] = now
            channel.send(("progress", job.phone.serial, done, total, what))

    outcome = run_job(job, report)
    channel.send(("outcome", job.phone.serial, asdict(outcome)))
    channel.close()


# ---- the lab: one worker per phone, a shared display -----------------------------------------------
class Display:
    """What a lab run tells its user; the default says nothing (tests, scripts)."""

    def start(self, phones: Sequence[PhoneId]) -> None: ...
    def progress(self, serial: str, done: int, total: int, what: str) -> None: ...
    def state(self, serial: str, text: str) -> None: ...
    def stop(self) -> None: ...


def run_lab(jobs: Sequence[PhoneJob], *, reconnects: int = DEFAULT_RECONNECTS, display: Display | None = None,
            backoff_s: float = RETRY_BACKOFF_S,
            on_worker_start: Callable[[str, int], None] | None = None) -> list[PhoneOutcome]:
    """Run every job in its own worker process at once; return the outcomes in the jobs' order.

    A worker that drops its phone (a device error) or dies (killed, crashed) is started again after a
    backoff, up to `reconnects` times, and resumes from the phone's store; then the phone is reported
    "failed" with the last sentence, while the other phones go on. `on_worker_start(serial, pid)` is
    told of each worker started (tests kill one).
    """
    display = display or Display()
    context = multiprocessing.get_context("spawn")  # the display's threads make fork unsafe
    # One pipe per worker, not one shared queue: a worker killed while it held a shared queue's write lock
    # would leave every other worker blocked on its next report, and the lab hung.
    channels: dict[str, Any] = {}
    by_serial = {job.phone.serial: job for job in jobs}
    attempts = dict.fromkeys(by_serial, 0)
    started_at = dict.fromkeys(by_serial, time.monotonic())
    outcomes: dict[str, PhoneOutcome] = {}
    running: dict[str, Any] = {}
    waiting: dict[str, float] = {serial: 0.0 for serial in by_serial}  # serial -> when to start its worker
    display.start([job.phone for job in jobs])

    def start(serial: str) -> None:
        attempts[serial] += 1
        reader, writer = context.Pipe(duplex=False)
        process = context.Process(target=_worker_main, args=(by_serial[serial], writer),
                                  name=f"jcw-lab-{serial}", daemon=True)
        process.start()
        writer.close()  # the worker holds the only write end: its exit is the reader's end of file
        running[serial], channels[serial] = process, reader
        display.state(serial, "running" if attempts[serial] == 1 else f"attempt {attempts[serial]}")
        if on_worker_start is not None:
            on_worker_start(serial, process.pid)

    def dropped(serial: str, error: str) -> None:
        if attempts[serial] <= reconnects:
            delay = backoff_s * 2 ** (attempts[serial] - 1)
            waiting[serial] = time.monotonic() + delay
            display.state(serial, f"dropped ({error}); retrying in {delay:.0f} s")
        else:
            outcomes[serial] = PhoneOutcome(serial, "failed", error=error, attempts=attempts[serial],
                                            seconds=time.monotonic() - started_at[serial])
            display.state(serial, "failed")

    def handle(message: tuple) -> None:
        kind, serial = message[0], message[1]
        if kind == "progress":
            display.progress(serial, *message[2:])
        elif kind == "outcome":
            outcome = PhoneOutcome(**message[2])
            process = running.pop(serial, None)
            if process is not None:
                process.join(timeout=30)
            if serial in channels:
                channels.pop(serial).close()
            if outcome.state == "dropped":
                dropped(serial, outcome.error)
                return
            outcome.attempts, outcome.seconds = attempts[serial], time.monotonic() - started_at[serial]
            outcomes[serial] = outcome
            display.state(serial, outcome.state)

    try:
        while len(outcomes) < len(by_serial):
            now = time.monotonic()
            for serial, when in list(waiting.items()):
                if now >= when:
                    del waiting[serial]
                    start(serial)
            for reader in connection.wait(list(channels.values()), timeout=0.2):
                serial = next(s for s, r in channels.items() if r is reader)
                try:
                    handle(reader.recv())
                except (EOFError, OSError, pickle.UnpicklingError):  # the worker is gone (its end closed)
                    channels.pop(serial).close()
            for serial, process in list(running.items()):
                if process.is_alive() or serial in channels:
                    continue  # a dead worker's last messages are read until its pipe's end of file
                running.pop(serial).join(timeout=5)
                dropped(serial, f"its worker process ended without a result (exit code {process.exitcode})")
            if not channels and not running and not waiting and len(outcomes) < len(by_serial):
                raise RuntimeError("lab bookkeeping lost a phone")  # no worker, none to start: a bug, not a hang
    finally:
        for process in running.values():  # Ctrl-C or a bug: the stores keep what each batch committed
            process.terminate()
        for process in running.values():
            process.join(timeout=10)
        for reader in channels.values():
            reader.close()
        display.stop()
    return [outcomes[job.phone.serial] for job in jobs]


def profile_jobs(phones: Sequence[PhoneId], root: str | Path, options: dict[str, Any]) -> list[PhoneJob]:
    """One profile job per phone, each into `root/<model>-<serial>`."""
    return [PhoneJob(phone, "profile", str(Path(root) / phone.dir_name), dict(options)) for phone in phones]
