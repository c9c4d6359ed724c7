"""Who runs a study's run: runner identity, orphans, heartbeats and atomic claims.

A **claim** is the MLflow run itself. A runner creates the run (RUNNING, tagged with the configuration's
``config_hash`` and the runner's identity), then reads the store: when any *other* active RUNNING or
FINISHED run of the same configuration is there, it withdraws its own (marked KILLED and deleted) and
backs off for a random while before looking again. Each claimant writes before it reads, so of two
runners claiming at once the later reader sees both claims: two can never both see only their own, and
no configuration is trained twice — whatever the executor (a process pool, Ray tasks, ``--shard`` jobs
on other nodes), as long as they share one tracking store (a database or a tracking server: writes are
committed before ``create_run`` returns). Two runners that both withdraw try again after random,
growing delays; one of them wins. Ordering claims by time instead (earliest wins) would not be safe:
clocks of two nodes differ.

A RUNNING run whose runner is gone (``kill -9``, a lost node, a preempted job) is an **orphan**: marked
FAILED and run again. It is known to be orphaned when its runner's process is gone on this machine, or
when its heartbeat (a tag the runner refreshes every 30 s) is older than ``MEDXFER_STALE_SECONDS``
(default 600) — the rule for runners on other machines sharing one tracking server. A runner is
identified by a random id per process start and its machine by the kernel's boot id and pid namespace
(hostnames repeat across containers and nodes): a process id is only checked on the machine it belongs to.
"""
from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..tracking.layout import (TAG_CLAIM, TAG_HEARTBEAT, TAG_HOST, TAG_MACHINE, TAG_PARENT_RUN, TAG_PID, TAG_RESET,
                               TAG_RUNNER, TAG_TASK)
from ..tracking.store import retry_on_conflict, search_all_runs

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 30.0
CLAIM_BACKOFF_SECONDS = 0.2  # the first random back-off's upper bound; doubled at each try …
CLAIM_BACKOFF_CAP_SECONDS = 10.0  # … up to this
TASK_ENV = "MEDXFER_TASK_ID"  # set by an executor in the process running a task


def stale_seconds() -> float:
    """How old a heartbeat may be before a RUNNING run of another machine counts as orphaned."""
    return float(os.environ.get("MEDXFER_STALE_SECONDS", "600"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def machine_id() -> str:
    """This machine, as far as process ids go: the kernel's boot id and this process's pid namespace
    (``boot:<uuid>/pid:[<inode>]``; two containers of one host differ) where ``/proc`` has them, else
    ``host:<hostname>``."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    if not boot:
        return f"host:{socket.gethostname()}"
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"boot:{boot}/{namespace}"


@dataclass(frozen=True)
class RunnerIdentity:
    """Who runs a run: host (for people), machine (:func:`machine_id`), process id and a random id
    of the process start (a restarted container may reuse both the hostname and the pid)."""

    host: str
    machine: str
    pid: int
    runner: str

    def tags(self) -> dict[str, str]:
        """The MLflow tags of a run this runner starts (with the executor's task id, when it runs one)."""
        task = {TAG_TASK: os.environ[TASK_ENV]} if os.environ.get(TASK_ENV) else {}
        return {TAG_HOST: self.host, TAG_MACHINE: self.machine, TAG_PID: str(self.pid), TAG_RUNNER: self.runner,
                **task}


_identity: RunnerIdentity | None = None


def runner_identity() -> RunnerIdentity:
    """This process's :class:`RunnerIdentity` (a new runner id in a forked child)."""
    global _identity
    if _identity is None or _identity.pid != os.getpid():
        _identity = RunnerIdentity(host=socket.gethostname(), machine=machine_id(), pid=os.getpid(),
                                   runner=uuid.uuid4().hex)
    return _identity


def is_orphaned(run, me: RunnerIdentity, now: float) -> bool:
    """A RUNNING run whose runner is gone: started by this very runner (a process runs one run at a
    time and has not started this one: it is asking), or on this machine by a process that is dead or
    whose pid is now this process's (a restarted container); on another machine — a different machine
    id, whatever the hostname — its heartbeat is older than :func:`stale_seconds`, never judged by pid.
    Runs of an older medxfer (no runner tag) are on this machine when their hostname is this one. A run
    tagged with the task this process is running is an earlier attempt of it (a retry after its worker
    was lost, maybe on another node)."""
    tags = run.data.tags
    if tags.get(TAG_TASK) and tags[TAG_TASK] == os.environ.get(TASK_ENV):
        return True
    if tags.get(TAG_RUNNER):
        if tags[TAG_RUNNER] == me.runner:
            return True
        local = tags.get(TAG_MACHINE) == me.machine
    else:
        local = tags.get(TAG_HOST) == me.host
    if local and tags.get(TAG_PID, "").isdigit():
        pid = int(tags[TAG_PID])
        if pid == me.pid or not _pid_alive(pid):
            return True
    return now - last_heartbeat(run) > stale_seconds()


CLOCK_SKEW_WARN_SECONDS = 60.0


def last_heartbeat(run) -> float:
    """The time of a run's last heartbeat (its start time before the first), by its runner's clock."""
    return float(run.data.tags.get(TAG_HEARTBEAT) or run.info.start_time / 1000.0)


def warn_clock_skew(runs: list, now: float) -> list:
    """Log a warning for each RUNNING run whose heartbeat is more than :data:`CLOCK_SKEW_WARN_SECONDS` (or
    half of :func:`stale_seconds`, if less) in this machine's future; returns them. Heartbeats are compared
    across machines, so their clocks must agree. (A clock running ahead here cannot be told from a dead
    runner's old heartbeat: only the other machine, reading this one's heartbeats, sees that skew.)"""
    limit = min(CLOCK_SKEW_WARN_SECONDS, stale_seconds() / 2)
    ahead = [r for r in runs if r.info.status == "RUNNING" and last_heartbeat(r) - now > limit]
    for r in ahead:
        log.warning("clock skew: run %s's heartbeat from %s is %.0f s ahead of this machine's clock; heartbeats "
                    "tell a lost runner only when the machines' clocks agree (NTP / chrony) to well within "
                    "MEDXFER_STALE_SECONDS (%.0f s)", r.info.run_id, r.data.tags.get(TAG_HOST, "?"),
                    last_heartbeat(r) - now, stale_seconds())
    return ahead


def reset_orphans(client, runs: list) -> list:
    """Mark the orphaned RUNNING runs among ``runs`` FAILED; returns the orphans (the other RUNNING
    runs are alive somewhere)."""
    me, now = runner_identity(), time.time()
    warn_clock_skew(runs, now)
    orphans = [r for r in runs if r.info.status == "RUNNING" and is_orphaned(r, me, now)]
    for r in orphans:
        client.set_terminated(r.info.run_id, status="FAILED")
        retry_on_conflict(client.set_tag, r.info.run_id, TAG_RESET, "runner gone; marked FAILED and re-run")
    return orphans


@dataclass
class Claim:
    """What claiming a configuration found: ``state`` is ``claimed`` (``run_id`` is ours to fill),
    ``done`` (a FINISHED run exists: ``run_id`` is it), or ``elsewhere`` (another live runner has it);
    ``reset``: orphaned runs of the configuration marked FAILED on the way."""

    state: str
    run_id: str | None = None
    reset: int = 0


def _withdraw(client, run_id: str) -> None:
    client.set_tag(run_id, TAG_CLAIM, "withdrawn")
    client.set_terminated(run_id, status="KILLED")
    client.delete_run(run_id)


def claim_run(client, experiment_id: str, filter_string: str, run_name: str, tags: dict[str, str],
              parent_run_id: str | None = None) -> Claim:
    """Claim the configuration whose runs ``filter_string`` finds (role and ``config_hash`` tags): a
    FINISHED run means ``done``; a live RUNNING one (after resetting orphans) ``elsewhere``; else this
    runner creates its run (``run_name``, ``tags`` with its identity and a first heartbeat) and keeps it
    only when no other claim of the configuration is in the store (see the module's docstring). After a
    collision (both claimants withdrew) it looks again after a random, growing wait, until the store
    settles: someone's claim stands, or the configuration is done."""
    me = runner_identity()
    reset = 0
    attempt = 0
    while True:
        runs = search_all_runs(client, experiment_id, filter_string)
        finished = sorted((r for r in runs if r.info.status == "FINISHED"), key=lambda r: r.info.end_time or 0)
        if finished:
            return Claim("done", finished[-1].info.run_id, reset)
        live = [r for r in runs if r.info.status == "RUNNING"]
        orphans = reset_orphans(client, live)
        reset += len(orphans)
        if len(orphans) < len(live):
            return Claim("elsewhere", None, reset)
        all_tags = {**tags, **me.tags(), TAG_HEARTBEAT: f"{time.time():.0f}"}
        if parent_run_id:
            all_tags[TAG_PARENT_RUN] = parent_run_id
        mine = client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id
        try:
            others = [r for r in search_all_runs(client, experiment_id, filter_string)
                      if r.info.run_id != mine and r.info.status in ("RUNNING", "FINISHED")]
        except BaseException:  # a signal or a lost store between create and check: never leave a claim behind
            _withdraw(client, mine)
            raise
        if not others:
            return Claim("claimed", mine, reset)
        _withdraw(client, mine)
        time.sleep(random.uniform(0, min(CLAIM_BACKOFF_CAP_SECONDS, CLAIM_BACKOFF_SECONDS * 2 ** attempt)))
        attempt += 1


class Heartbeat:
    """Refresh the heartbeat tag of the run this process is training (``run_id``; None between runs)
    every :data:`HEARTBEAT_SECONDS`, in a daemon thread."""

    def __init__(self, client):
        self.client = client
        self.run_id: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="medxfer-heartbeat")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def beat(self) -> None:
        """Refresh the tag now (a missed beat is logged at debug level, not an error)."""
        run_id = self.run_id
        if not run_id:
            return
        try:
            self.client.set_tag(run_id, TAG_HEARTBEAT, f"{time.time():.0f}")
        except Exception as exc:  # noqa: BLE001 - the next beat may get through
            log.debug("heartbeat failed: %s", exc)

    def _loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self.beat()
