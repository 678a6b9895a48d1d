"""Scheduling an experiment's runs as Ray tasks: packs of compatible runs, one task each, with the
grid's resources. Ray retries a task whose worker died; a run that raises is `failed` and the
rest go on; runs another process is training are waited for, never trained twice."""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from rethink.errors import RethinkError
from rethink.runner import raylogs, signals, watchdog
from rethink.runner.grid import Resources
from rethink.runner.outcomes import PackResult
from rethink.runner.progress import Progress
from rethink.states import Outcome, RunState, StopReason
from rethink.storage.store import Store, now
from rethink.tasks.spec import RunSpec

WAIT_S = 1.0  # how often the driver looks up from Ray to refresh progress and check for cancel
BUSY_RECHECK_S = 2.0  # how often runs held by another process are looked at again
TASK_RETRIES = 3  # Ray retries of a task whose worker process died ($RETHINK_TASK_RETRIES overrides)
CANCEL_GRACE_S = 60.0  # how long cancelled workers get to stop at an epoch boundary


@dataclass
class Summary:
    done: int = 0
    failed: int = 0
    skipped: int = 0  # already done before this call
    cancelled: bool = False
    errors: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def packs(runs: Iterable[RunSpec], pack_size: int, gpu_bytes: int | None = None) -> list[list[RunSpec]]:
    """Group runs that can share a device and a model shape, `pack_size` at most per pack;
    pack_size 0 sizes each group to `gpu_bytes` of GPU memory (1 without a GPU)."""
    groups: dict[tuple, list[RunSpec]] = {}
    for run in runs:
        groups.setdefault(run.pack_key, []).append(run)
    out = []
    for group in groups.values():
        if pack_size or gpu_bytes is None:  # without a GPU a pack is one run: the driver needs no torch
            size = pack_size or 1
        else:
            from rethink.tasks.stacked import suggested_pack_size

            size = suggested_pack_size(group[0], gpu_bytes)
        out += [group[i : i + size] for i in range(0, len(group), size)]
    return out


def gpu_bytes_per_task(resources: Resources) -> int | None:
    """GPU memory a task may plan with: its share of one GPU of $RETHINK_GPU_MEMORY_GB (default
    80, an H100); None when the grid asks for no GPU."""
    if not resources.gpus:
        return None
    text = os.environ.get("RETHINK_GPU_MEMORY_GB", "").strip() or "80"
    try:
        gb = float(text)
    except ValueError:
        gb = math.nan
    if not 0 < gb <= 100_000:
        raise RethinkError(f"RETHINK_GPU_MEMORY_GB must be a GPU's memory in GB (e.g. 80), got {text[:40]!r}")
    return int(gb * 2**30 * min(resources.gpus, 1.0))


def pack_task(store_uri: str, experiment: str, configs: list[dict], data_dir: str, token: str,
              threads: int = 0) -> list[PackResult]:
    """The Ray task: `worker.run_pack`, imported on the worker, so the driver never loads torch."""
    from rethink.runner.worker import run_pack

    return run_pack(store_uri, experiment, configs, data_dir, token, threads)


def connect_ray(address: str | None, quiet: bool) -> bool:
    """Join the cluster at `address` (or $RAY_ADDRESS); else start an embedded local one.
    Returns False when this process was already connected (then it is not ours to shut down)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs = {"include_dashboard": False} if address == "local" else {}
    said: list[str] = []
    try:
        # an embedded cluster is this driver's alone: a watchdog ends it when the driver ends;
        # a join's own stderr is held back: a refused token is one line, not 20 s of Ray's retries
        with watchdog.started() if address == "local" else raylogs.held_stderr() as said:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=not quiet, **kwargs)
            signals.rearm()  # Ray's handlers print a stack dump on SIGTERM and skip our clean stop
            if address == "local":
                node = getattr(ray._private.worker, "_global_node", None)
                watchdog.tell(node.get_session_dir_path() if node is not None else None)
        raylogs.replay(said or [])
    except (ConnectionError, ValueError, RuntimeError) as exc:
        if raylogs.refused_token(said or []):
            raise RethinkError(f"the Ray cluster at '{address}' refused this driver's token: set RAY_AUTH_MODE=token "
                               "and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the head's token") from None
        raise RethinkError(f"cannot reach the Ray cluster at '{address}': {' '.join(str(exc).split())}") from None
    except SystemExit as exc:  # SIGTERM met Ray's handler, set while ray.init ran: our stop all the same
        if exc.code == signal.SIGTERM:
            signals.interrupt(signal.SIGTERM)
        raise
    return True


def run_experiment(
    store: Store, name: str, runs: list[RunSpec], resources: Resources, data_dir: Path | str,
    *, address: str | None = None, quiet: bool = False, pack_size: int = 0, prepare=None,
) -> Summary:
    """`_run_experiment` with SIGTERM taken as Ctrl-C (runner/signals.py): one line, runs resumable."""
    try:
        with signals.sigterm_as_interrupt():
            return _run_experiment(store, name, runs, resources, data_dir, address=address, quiet=quiet,
                                   pack_size=pack_size, prepare=prepare)
    except KeyboardInterrupt as exc:  # before the grid's loop (while Ray starts): nothing to stop yet
        raise Interrupted.of(name, signals.received(exc), started=False) from None


def _run_experiment(
    store: Store, name: str, runs: list[RunSpec], resources: Resources, data_dir: Path | str,
    *, address: str | None = None, quiet: bool = False, pack_size: int = 0, prepare=None,
) -> Summary:
    """Train every run of `runs` that is not done, until all are done or failed (or cancelled).
    `prepare` runs once the cluster is known to fit the tasks, before anything is scheduled: a
    refused grid leaves the store untouched."""
    import ray

    summary = Summary()
    todo, lost, carried = [], [], {}
    for run in runs:
        status = store.read_status(run.run_id)
        carried[run.run_id] = int((status or {}).get("epochs_done") or 0)
        if status and status.get("status") == RunState.DONE:
            if rows_intact(store, run.run_id, status):
                summary.skipped += 1
                continue
            lost.append(run)
        todo.append(run)
    if not todo:
        if prepare:
            prepare()
        return summary
    _say_starting(name, address)
    owns_ray = connect_ray(address, quiet)
    _check_feasible(resources, owns_ray)
    if prepare:
        prepare()
    for run in lost:  # its rows are gone: it is not done, whatever its status said
        store.write_status(run.run_id, status=RunState.PENDING, stop_reason=StopReason.ROWS_LOST)
        summary.notes.append(f"run {run.run_id}: marked done but its epoch rows are missing, unreadable or damaged; "
                             "trained again")
    task = ray.remote(pack_task).options(
        num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=_task_retries(), retry_exceptions=False
    )
    threads = 0 if resources.gpus else max(1, int(resources.cpus))
    progress = Progress(name, total=len(runs), epochs=sum(r.train.epochs for r in runs), quiet=quiet)
    todo_ids = {r.run_id for r in todo}
    progress.advance_done(summary.skipped, sum(r.train.epochs for r in runs if r.run_id not in todo_ids))
    for run in todo:  # a resume's bar starts from the newest checkpoint earlier attempts left
        if carried[run.run_id] and run not in lost:
            progress.carry(run, max(store.checkpoint_epochs(run.run_id), default=0))
    in_flight: dict = {}  # object ref -> runs of the pack
    tokens: dict = {}  # object ref -> the token its task claims runs with

    def launch(pack: list[RunSpec]) -> None:
        token = uuid.uuid4().hex
        ref = task.remote(store.uri, name, [r.to_dict() for r in pack], str(data_dir), token, threads)
        in_flight[ref] = pack
        tokens[ref] = token

    busy: list[RunSpec] = []
    waits: dict[str, str] = {}  # run_id -> the holder last said to be training it (said once each)
    last_busy_check = 0.0
    try:
        with progress:
            for pack in packs(todo, pack_size, gpu_bytes_per_task(resources)):
                launch(pack)
            progress.say(f"{len(in_flight)} task{'s' if len(in_flight) != 1 else ''} queued; workers loading torch and data")
            while in_flight or busy:
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=WAIT_S) if in_flight else ([], [])
                for ref in ready:
                    pack = in_flight.pop(ref)
                    for result in _results(ref, pack, store, tokens.pop(ref)):
                        _account(result, pack, summary, progress, busy)
                store.check_lease()  # a driver that lost its lease to another stops here, in one line
                if store.cancel_requested(name):
                    summary.cancelled = True
                    _wind_down(in_flight, pack_results=lambda ref, pack: [
                        _account(r, pack, summary, progress, busy) for r in _results(ref, pack, store, tokens[ref])])
                    break
                if busy and time.monotonic() - last_busy_check > BUSY_RECHECK_S:
                    last_busy_check = time.monotonic()
                    busy = _relaunch_free(store, busy, launch, summary, progress, waits)
                progress.refresh(store, [r for p in in_flight.values() for r in p])
                progress.tick()
    except KeyboardInterrupt as exc:
        summary.cancelled = True
        raise Interrupted.of(name, signals.received(exc)) from None
    finally:
        if in_flight:
            _stop(in_flight, store, StopReason.CANCELLED if store.cancel_requested(name) else StopReason.INTERRUPTED)
        if owns_ray:
            _shutdown(embedded=not (address or os.environ.get("RAY_ADDRESS")))
    return summary


def _say_starting(name: str, address: str | None) -> None:
    """The first seconds of a submit are Ray's start: say so, on stderr, before they pass."""
    where = address or os.environ.get("RAY_ADDRESS")
    from rethink.text import one_line, redacted  # $RAY_ADDRESS may hold a user:password

    what = f"joining the Ray cluster at {one_line(redacted(where))}" if where else "starting an embedded Ray cluster"
    print(f"{name}: {what}…", file=sys.stderr, flush=True)


def _task_retries() -> int:
    value = os.environ.get("RETHINK_TASK_RETRIES", str(TASK_RETRIES))
    if not value.isdigit():
        raise RethinkError(f"RETHINK_TASK_RETRIES must be a whole number >= 0, got {value!r}")
    return int(value)


def rows_intact(store: Store, run_id: str, status: dict) -> bool:
    """A done run's epoch rows are there, read whole (a footer alone passes a corrupt page), are
    its own, once per epoch, and every epoch its status counts (runner/damage.py)."""
    from rethink.runner.damage import epochs_problem

    done = status.get("epochs_done") or 0
    return epochs_problem(store, run_id, done) is None and store.epoch_rows(run_id) not in (None, 0)


def _shutdown(embedded: bool) -> None:
    """Leave Ray. Of the processes an embedded cluster stops one by one, the autoscaler's monitor
    (idle on a one-machine cluster) takes a second to exit when asked: 1.0 of the 1.4 s Ray's
    shutdown takes here, on every `rethink submit`. It is killed outright; the raylet, which
    stops its workers and agents itself, still exits gracefully. Ray keeps that step private; if
    it moves, the ordinary shutdown runs."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None) if embedded else None
    kill_type = getattr(node, "_kill_process_type", None)
    if callable(kill_type):
        def kill(process_type: str, allow_graceful: bool = False, **kwargs) -> None:
            kill_type(process_type, allow_graceful=allow_graceful and process_type != "monitor", **kwargs)

        node._kill_process_type = kill
    ray.shutdown()
    watchdog.stop()  # and whatever Ray left running is swept


class Interrupted(RethinkError):
    """Ctrl-C or SIGTERM: the tasks were stopped and the grid left resumable."""

    exit_code = 130

    @classmethod
    def of(cls, name: str, signum: int | None, started: bool = True) -> Interrupted:
        """The line for Ctrl-C (signum None) or a SIGTERM/SIGHUP taken as one (runner/signals.py)."""
        what = f"terminated ({signal.Signals(signum).name})" if signum else "interrupted"
        stop = cls(f"{what}; the grid is resumable: `rethink resume {name}`" if started else
                   f"{what} while Ray started, before any run of {name} was scheduled")
        if signum:
            stop.exit_code = 128 + signum  # as a shell reports a process a signal ended
        return stop


def _check_feasible(resources: Resources, owns_ray: bool) -> None:
    """A task asking for more than the whole cluster has would wait forever: say so instead."""
    import ray

    have = ray.cluster_resources()
    for key, want in (("GPU", resources.gpus), ("CPU", resources.cpus)):
        if want > have.get(key, 0):
            if owns_ray:
                ray.shutdown()
                watchdog.stop()
            raise RethinkError(
                f"each task asks for {want:g} {key}s but the Ray cluster has {have.get(key, 0):g}; "
                f"change the grid's resources (e.g. --set resources.{key.lower()}s=0) or join a bigger cluster"
            )


def _results(ref, pack: list[RunSpec], store: Store, token: str) -> list[PackResult]:
    """The task's PackResults; when the task itself raised or its worker died once too often, a
    failed result per run, and the same written to the store for the runs this task still held
    (so nothing stays `running` with no one training it)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # the task itself raised: every run of it failed
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        text, reason = " ".join(f"{type(cause).__name__}: {cause}".split())[:500], StopReason.ERROR
    except ray.exceptions.RayError as exc:  # worker died more often than Ray retries
        text, reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:500], StopReason.WORKER_DIED
    return [_fail_held(store, run.run_id, token, text, reason) for run in pack]


def _fail_held(store: Store, run_id: str, token: str, error: str, reason: StopReason) -> PackResult:
    """Write `failed` for a run of a task that could not report, unless someone else has it now:
    a done run stays done, a run another attempt claimed is that attempt's to report."""
    status = store.read_status(run_id) or {}
    newest = store.newest_claim(run_id)
    if status.get("status") == RunState.DONE:
        return PackResult(run_id, Outcome.SKIPPED)
    if newest is not None and newest[1].get("token") not in (token, None) and store.claim_holder(run_id):
        return PackResult(run_id, Outcome.BUSY)
    if newest is not None and newest[1].get("token") == token and not newest[1].get("released"):
        store.release(run_id, newest[0])
    store.write_status(run_id, status=RunState.FAILED, stop_reason=reason, error=error, finished_at=now())
    return PackResult(run_id, Outcome.FAILED, error=error)


def _account(result: PackResult, pack: list[RunSpec], summary: Summary, progress: Progress,
             busy: list[RunSpec]) -> None:
    run = next(r for r in pack if r.run_id == result.run_id)
    summary.notes.extend(f"run {run.run_id}: {note}" for note in result.notes)
    if result.outcome == Outcome.DONE:
        summary.done += 1
        progress.finished(run, ok=True)
    elif result.outcome == Outcome.SKIPPED:
        summary.skipped += 1
        progress.finished(run, ok=True)
    elif result.outcome == Outcome.FAILED:
        summary.failed += 1
        summary.errors[run.run_id] = result.error or "unknown error"
        progress.finished(run, ok=False, error=summary.errors[run.run_id])
    elif result.outcome in (Outcome.BUSY, Outcome.TAKEN_OVER):  # another attempt trains it: wait for it
        busy.append(run)
    # CANCELLED: the run stays resumable; the loop notices the cancel request itself


def _relaunch_free(store: Store, busy: list[RunSpec], launch, summary: Summary, progress: Progress,
                   waits: dict[str, str]) -> list[RunSpec]:
    """Runs another process was training: done now → count them; given up → train them here.
    While one is held, say once per holder whose it is and how long the wait may last (the
    claim timeout after its last beat), so a resume never waits in silence."""
    still = []
    for run in busy:
        status = store.read_status(run.run_id) or {}
        holder = None if status.get("status") == RunState.DONE else store.claim_holder(run.run_id)
        if status.get("status") == RunState.DONE:
            summary.skipped += 1
            progress.finished(run, ok=True)
        elif holder is None:
            waits.pop(run.run_id, None)
            launch([run])
        else:
            still.append(run)
            who = f"{holder.get('host')} {holder.get('pid')} {holder.get('token')}"
            if waits.get(run.run_id) != who:
                waits[run.run_id] = who
                progress.note(_held_line(store, run.run_id, holder))
    return still


def _held_line(store: Store, run_id: str, holder: dict) -> str:
    """'run ab12 is held by host H pid P (claim beat 12 s ago); waiting up to 588 s …'. The host
    and pid come from the store: shown as text (text.one_line), never acted on."""
    from rethink.storage.claims import CLAIM_TIMEOUT_S
    from rethink.text import one_line

    age = store.claim_age(run_id) or 0.0
    host, pid = one_line(holder.get("host", "?"))[:80], one_line(holder.get("pid", "?"))[:20]
    return (f"run {run_id[:8]} is held by host {host} pid {pid} (claim beat {age:.0f} s ago); waiting up to "
            f"{max(0.0, CLAIM_TIMEOUT_S - age):.0f} s for it to finish or go stale")


def _wind_down(in_flight: dict, pack_results) -> None:
    """After a cancel request the workers stop by themselves at their next epoch (they read the
    same flag) and mark their runs pending; wait for them to report, up to CANCEL_GRACE_S."""
    import ray

    ready, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=CANCEL_GRACE_S)
    for ref in ready:
        pack_results(ref, in_flight.pop(ref))


def _stop(in_flight: dict, store: Store, reason: StopReason) -> None:
    """Kill the tasks still running, wait until they are gone, then leave their runs pending
    (resumable). Waiting first matters: a dying worker could otherwise write `running` last."""
    import ray

    refs = list(in_flight)
    for ref in refs:
        ray.cancel(ref, force=True)
    ray.wait(refs, num_returns=len(refs), timeout=30)
    for pack in in_flight.values():
        for run in pack:
            status = store.read_status(run.run_id) or {}
            if status.get("status") in (None, RunState.RUNNING):
                store.write_status(run.run_id, status=RunState.PENDING, stop_reason=reason)
    in_flight.clear()
