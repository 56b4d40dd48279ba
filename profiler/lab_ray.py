"""A device lab on many hosts, on Ray: each host advertises its phones as resources (`phone:<serial>`), and
each phone's job runs in an actor pinned to the host that holds it by that resource.

Owns the cluster side of the lab: serving a host's phones, the lab board (a detached actor on the head that
knows every phone's address and model and each job's progress), the phone actors and the driver loop. The
per-phone work itself is profiler.lab's; results go straight into each phone's store under a path every host
can write (a shared directory), so a killed host loses only its batch in flight and a rerun measures only
what is missing. Needs the `lab` extra (Ray).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import ray

from jcw.profiler import lab
from jcw.profiler.lab import LabUnreachable, LabUsageError, PhoneId, PhoneJob, PhoneOutcome

NAMESPACE = "jcw-lab"
BOARD_NAME = "jcw-lab-board"
RESOURCE_PREFIX = "phone:"
#: The head's own resource (every Ray head has it): the board lives there, so a worker host that dies
#: takes none of the lab's bookkeeping with it.
HEAD_RESOURCE = "node:__internal_head__"
#: A host's Ray footprint: the phone actors need no CPU (the phone computes), a small object store.
HOST_OBJECT_STORE_BYTES = 100 * 1024 * 1024
CONNECT_TIMEOUT_S = 5.0
SERVE_READY_TIMEOUT_S = 120.0
POLL_S = 0.5
STOP_TIMEOUT_S = 60.0


def resource_name(serial: str) -> str:
    return f"{RESOURCE_PREFIX}{serial}"


def _ray_env() -> dict[str, str]:
    """Ray's processes without its usage reporting, which phones home from a lab's hosts otherwise."""
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def _ray_executable() -> str:
    return str(Path(sys.executable).with_name("ray"))


def check_reachable(address: str) -> None:
    """LabUnreachable (one sentence) unless something answers at the cluster's HOST:PORT, within seconds,
    rather than letting Ray retry for a minute."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise LabUsageError(f"--address {address!r} is not a Ray cluster address; use HOST:PORT, as printed "
                            f"by `ray start --head` (port 6379 by default).")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise LabUnreachable(f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one with "
                             f"`ray start --head` there, or check --address.") from None


def connect(address: str) -> None:
    """Join the cluster at `address` as a driver (quietly), or LabUnreachable in one sentence."""
    check_reachable(address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR",
                 ignore_reinit_error=True)
    except Exception as exc:  # Ray's own wording varies by version; the sentence says what to do
        ray.shutdown()  # a half-made connection would make Ray's next call start its own
        raise LabUnreachable(f"the Ray cluster at {address} did not accept this host "
                             f"({' '.join(str(exc).split())[:200]}); check that it runs the same Ray and Python "
                             f"versions.") from None


# ---- the lab board: phones, jobs, progress -------------------------------------------------------
@ray.remote(num_cpus=0)
class LabBoard:
    """What every host and driver of the lab reads and writes: phones served and jobs' progress."""

    def __init__(self) -> None:
        self.phones: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}

    def register(self, phones: list[dict[str, Any]], host: str) -> None:
        for phone in phones:
            self.phones[phone["serial"]] = {**phone, "host": host, "registered": time.time()}

    def job(self, serial: str, **fields: Any) -> None:
        self.jobs.setdefault(serial, {}).update(fields, updated=time.time())

    def snapshot(self) -> dict[str, Any]:
        return {"phones": self.phones, "jobs": self.jobs}


def board() -> Any:
    """The lab board, created on the head the first time anyone asks."""
    return LabBoard.options(name=BOARD_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                            resources={HEAD_RESOURCE: 0.001}).remote()


def served_phones() -> dict[str, dict[str, Any]]:
    """{serial: phone} of the hosts alive now: the phone resources they advertise, with the board's facts."""
    snapshot = ray.get(board().snapshot.remote())
    phones: dict[str, dict[str, Any]] = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        for name in node.get("Resources", {}):
            if name.startswith(RESOURCE_PREFIX):
                serial = name[len(RESOURCE_PREFIX):]
                phones[serial] = {**snapshot["phones"].get(serial, {"serial": serial, "model": "?", "address": "?"}),
                                  "node_id": node["NodeID"], "node_ip": node.get("NodeManagerAddress", "?")}
    return phones


# ---- serving a host's phones ----------------------------------------------------------------------
def serve(address: str | None, phones: Sequence[PhoneId], *, head_port: int = 6379, num_cpus: int = 1,
          on_ready: Any = None) -> int:
    """Start this host's Ray node advertising `phones` (a worker joining `address`, or the head when
    `address` is None), register them on the lab board, then block until the node ends or this process
    is stopped; returns the node's exit status."""
    if address is not None:
        check_reachable(address)
    resources = json.dumps({resource_name(phone.serial): 1 for phone in phones})
    command = [_ray_executable(), "start", "--block", "--disable-usage-stats", f"--num-cpus={num_cpus}",
               f"--resources={resources}", f"--object-store-memory={HOST_OBJECT_STORE_BYTES}"]
    command += (["--head", f"--port={head_port}", "--include-dashboard=false"] if address is None
                else [f"--address={address}"])
    node = subprocess.Popen(command, env=_ray_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop = {"asked": False}

    def ask_to_stop(signum: int, _frame: object) -> None:
        stop["asked"] = True
        node.terminate()
    previous = signal.signal(signal.SIGTERM, ask_to_stop)
    try:
        cluster = address or f"127.0.0.1:{head_port}"
        # Any Ray call that connects by itself goes here, not to a cluster an earlier session left on record.
        os.environ["RAY_ADDRESS"] = cluster
        _wait_registered(cluster, phones, node)
        signal.signal(signal.SIGTERM, ask_to_stop)  # the Ray driver that registered the phones replaced it
        if on_ready is not None:
            on_ready(cluster)
        status = node.wait()
        return 0 if stop["asked"] else status
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop_node(node)


def _stop_node(node: subprocess.Popen) -> None:
    """`ray start --block` stops its node's processes on SIGTERM, in its own time; a minute at most."""
    if node.poll() is None:
        node.terminate()
    try:
        node.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        node.kill()
        node.wait(timeout=10)


def _wait_registered(cluster: str, phones: Sequence[PhoneId], node: subprocess.Popen) -> None:
    """Until the node's phone resources show in the cluster, then tell the board who the phones are."""
    wanted = {resource_name(phone.serial) for phone in phones}
    deadline = time.monotonic() + SERVE_READY_TIMEOUT_S
    while True:
        if node.poll() is not None:
            reason = " ".join((node.stderr.read() if node.stderr else "").split()[-40:])
            raise LabUnreachable(f"this host's Ray node stopped at once (exit status {node.returncode}: "
                                 f"{reason[-300:] or 'no message'}).")
        try:
            check_reachable(cluster)
            connect(cluster)
            advertised = {name for n in ray.nodes() if n.get("Alive") for name in n.get("Resources", {})}
        except (LabUnreachable, ConnectionError):
            advertised = set()
        if wanted <= advertised:
            break
        if time.monotonic() > deadline:
            raise LabUnreachable(f"this host's Ray node did not join {cluster} within "
                                 f"{SERVE_READY_TIMEOUT_S:.0f} s.")
        time.sleep(POLL_S)
    ray.get(board().register.remote([asdict(phone) for phone in phones], socket.gethostname()))
    ray.shutdown()  # the node serves on; this process only waits for it


# ---- the phone actors and the driver --------------------------------------------------------------
@ray.remote(num_cpus=0, max_restarts=0)
class PhoneWorker:
    """One phone's job, on the host that holds the phone (its `phone:<serial>` resource pins it there)."""

    def run(self, job: PhoneJob, lab_board: Any) -> dict[str, Any]:
        serial = job.phone.serial
        host = socket.gethostname()
        lab_board.job.remote(serial, state="running", host=host, node_id=ray.get_runtime_context().get_node_id(),
                             pid=os.getpid(), kind=job.kind, out=job.out_dir)
        last = [0.0]

        def report(done: int, total: int, what: str) -> None:
            now = time.monotonic()
            if now - last[0] >= lab.PROGRESS_INTERVAL_S or done >= total:
                last[0] = now
                lab_board.job.remote(serial, done=done, total=total, what=what)

        with tempfile.TemporaryDirectory(prefix="jcw-lab-") as scratch:
            outcome = lab.run_job(_with_local_files(job, Path(scratch)), report)
        lab_board.job.remote(serial, state=outcome.state, error=outcome.error)
        return asdict(outcome)


def program_blobs(paths: Sequence[str]) -> list[tuple[str, bytes]]:
    """A measure job's files as (name, bytes): the phone's host may not see the driver's disk."""
    return [(Path(path).name, Path(path).read_bytes()) for path in paths]


def _with_local_files(job: PhoneJob, scratch: Path) -> PhoneJob:
    """A measure job whose programs arrived as bytes, with them written where this host can read them."""
    blobs = job.options.get("blobs")
    if not blobs:
        return job
    paths = []
    for index, (name, data) in enumerate(blobs):
        path = scratch / f"{index}-{name}"
        path.write_bytes(data)
        paths.append(str(path))
    options = {k: v for k, v in job.options.items() if k != "blobs"}
    return replace(job, options={**options, "paths": paths})


def resolve(requested: Sequence[str]) -> list[PhoneId]:
    """The served phones a lab command names (serials, or `all`), with their addresses on their hosts;
    LabUsageError for a serial no host serves, a phone named twice, or a lab with no phone."""
    served = served_phones()
    wanted: list[str] = []
    for text in requested:
        if text == "all":
            if not served:
                raise LabUsageError("no host of the Ray cluster serves a phone; run `jcw lab serve --address HEAD "
                                    "--device ...` on the hosts the phones are attached to.")
            wanted.extend(sorted(served))
            continue
        serial = text.removeprefix("usb:")
        if serial not in served:
            raise LabUsageError(f"no host of the Ray cluster serves a phone with serial {serial!r}; "
                                f"`jcw lab status` lists the ones that do.")
        wanted.append(serial)
    lab.check_named_once(wanted)
    return [PhoneId(address=served[s]["address"], serial=s, model=served[s].get("model", "phone")) for s in wanted]


def run_cluster(jobs: Sequence[PhoneJob], *, display: lab.Display | None = None,
                reconnects: int = lab.DEFAULT_RECONNECTS) -> list[PhoneOutcome]:
    """Run each job in an actor on its phone's host, all at once; outcomes in the jobs' order.

    A dropped phone (device error) or a crashed actor on a host that is still there gets a new actor, up
    to `reconnects` times; a phone whose host left the cluster is reported "failed" at once, as nothing
    else can reach it: serve the host again and rerun (its store resumes).
    """
    display = display or lab.Display()
    lab_board = board()
    by_serial = {job.phone.serial: job for job in jobs}
    attempts = dict.fromkeys(by_serial, 0)
    started = time.monotonic()
    pending: dict[Any, str] = {}
    outcomes: dict[str, PhoneOutcome] = {}
    display.start([job.phone for job in jobs])

    def launch(serial: str) -> None:
        attempts[serial] += 1
        ray.get(lab_board.job.remote(serial, state="waiting for its host", done=0, total=0, what="", error=""))
        actor = PhoneWorker.options(resources={resource_name(serial): 1}).remote()
        pending[actor.run.remote(by_serial[serial], lab_board)] = serial
        display.state(serial, "waiting for its host" if attempts[serial] == 1 else f"attempt {attempts[serial]}")

    def finish(serial: str, outcome: PhoneOutcome) -> None:
        outcome.attempts, outcome.seconds = attempts[serial], time.monotonic() - started
        outcomes[serial] = outcome
        display.state(serial, outcome.state)

    for serial in by_serial:
        launch(serial)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
        for ref in ready:
            serial = pending.pop(ref)
            try:
                outcome = PhoneOutcome(**ray.get(ref))
            except ray.exceptions.RayError as exc:
                host_alive = resource_name(serial) in ray.cluster_resources()
                error = ("its host left the Ray cluster; serve the phone there again and rerun, which measures "
                         "only what is missing" if not host_alive else
                         f"its actor died ({type(exc).__name__})")
                ray.get(lab_board.job.remote(serial, state="failed" if not host_alive else "dropped", error=error))
                outcome = PhoneOutcome(serial, "dropped" if host_alive else "failed", error=error)
            if outcome.state == "dropped" and attempts[serial] <= reconnects:
                display.state(serial, f"dropped ({outcome.error}); retrying")
                time.sleep(lab.RETRY_BACKOFF_S)
                launch(serial)
            else:
                finish(serial, outcome if outcome.state != "dropped" else replace(outcome, state="failed"))
        jobs_now = ray.get(lab_board.snapshot.remote())["jobs"]
        for serial in pending.values():
            job = jobs_now.get(serial, {})
            if job.get("total"):
                display.progress(serial, job["done"], job["total"], job.get("what", ""))
            if job.get("host") and job.get("state") == "running":
                display.state(serial, f"running on {job['host']}")
    display.stop()
    return [outcomes[job.phone.serial] for job in jobs]


def status() -> dict[str, Any]:
    """Hosts (alive or gone), the phones each serves, and every job's host, state and progress."""
    snapshot = ray.get(board().snapshot.remote())
    hosts = []
    for node in ray.nodes():
        resources = node.get("Resources", {}) or {}
        hosts.append({"node_id": node["NodeID"], "ip": node.get("NodeManagerAddress", "?"),
                      "alive": bool(node.get("Alive")), "head": HEAD_RESOURCE in resources,
                      "phones": sorted(n[len(RESOURCE_PREFIX):] for n in resources if n.startswith(RESOURCE_PREFIX))})
    return {"hosts": hosts, "phones": served_phones(), "jobs": snapshot["jobs"]}
