"""Background jobs inside one process: long work that survives page changes and shows progress.

The app starts its long actions (segment a visit, compare two visits, analyse a patient) here
instead of on Streamlit's script thread, so leaving the page neither stops the work nor blocks
the session. A job is a function ``fn(progress)``; it calls ``progress(fraction, text)`` as it
goes, and any page can read the job's state by its key.

* One process-wide registry (:func:`start`, :func:`get`, :func:`active`, :func:`wait`), shared by
  every browser session of the Streamlit server; all methods are thread-safe.
* Jobs are keyed by the caller (``"segment/sub-01/ses-02@/data/study"``). Starting a key that is
  queued or running returns that job instead of doing the work twice; starting a finished key
  runs it again.
* A fixed number of daemon worker threads (1 by default, so two heavy jobs do not fight for the
  CPU cores) take jobs in the order they were started; the others wait as ``"queued"``.
* A failure is stored as text: an :class:`~ms_core.foundation.errors.InputError` message
  verbatim (it names the file), anything else as ``"TypeName: message"`` with its traceback logged.
* Finished jobs are kept (the most recent ``keep_finished``) so a page can show the outcome.

Job functions must not hold UI objects (a Streamlit element dies with its script run). The
results they write are safe without the registry: study writes are atomic and take the visit's
folder lock (:mod:`ms_core.study.locks`). Worker threads are daemons, so stopping the server does
not wait for a running job; its partial files are never visible (atomic writes) and the next run
does the work again.

>>> runner = JobRunner()
>>> job = runner.start("demo", lambda progress: progress(0.5, "half way"), label="a demo")
>>> runner.wait("demo", timeout_s=10).status
'done'
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from ms_core.foundation.errors import InputError

__all__ = [
    "Job",
    "JobRunner",
    "JobStatus",
    "Progress",
    "Work",
    "active",
    "forget",
    "get",
    "start",
    "wait",
]

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "done", "failed"]
#: ``progress(fraction, text)``: fraction done in [0, 1] (clipped) and what is being done.
Progress = Callable[[float, str], None]
#: The work of a job; it reports through the ``progress`` function it is given.
Work = Callable[[Progress], None]


@dataclass(frozen=True)
class Job:
    """A snapshot of one job's state (the registry replaces it on every change).

    Attributes
    ----------
    key, label
        The caller's key and a short description for people ("segmenting sub-01 ses-02").
    status
        ``"queued"``, ``"running"``, ``"done"`` or ``"failed"``.
    fraction, text
        The last progress reported: fraction done in [0, 1] and its text.
    job_id
        Unique in the process; a key started again gets a new id.
    submitted_s, started_s, finished_s
        Wall-clock times (``time.time()``, seconds); ``None`` until they happen.
    error
        Why the job failed, or ``None``.
    """

    key: str
    label: str
    status: JobStatus
    fraction: float
    text: str
    job_id: int
    submitted_s: float
    started_s: float | None = None
    finished_s: float | None = None
    error: str | None = None

    @property
    def is_active(self) -> bool:
        """Queued or running."""
        return self.status in ("queued", "running")


class JobRunner:
    """A registry of jobs and the daemon threads that run them (see the module docstring).

    Parameters
    ----------
    workers
        Jobs run at the same time (worker threads, started with the first job).
    keep_finished
        Finished jobs remembered; the oldest are dropped beyond this.
    """

    def __init__(self, workers: int = 1, keep_finished: int = 64) -> None:
        if workers < 1 or keep_finished < 1:
            raise ValueError(f"workers and keep_finished must be >= 1, got {workers}, "
                             f"{keep_finished}")
        self._workers = workers
        self._keep_finished = keep_finished
        self._changed = threading.Condition()  # guards _jobs; notified on every change
        self._jobs: dict[str, Job] = {}
        self._queue: queue.SimpleQueue[tuple[Job, Work]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._ids = itertools.count(1)

    def start(self, key: str, fn: Work, label: str) -> Job:
        """Queue ``fn(progress)`` under ``key``; an active job of that key is returned instead."""
        with self._changed:
            current = self._jobs.get(key)
            if current is not None and current.is_active:
                return current
            job = Job(key, label, "queued", 0.0, "Queued", next(self._ids), time.time())
            self._jobs.pop(key, None)  # re-insert: the dict keeps start order
            self._jobs[key] = job
            self._prune()
            self._queue.put((job, fn))
            while len(self._threads) < self._workers:
                thread = threading.Thread(target=self._work, daemon=True,
                                          name=f"ms_dash-job-{len(self._threads)}")
                thread.start()
                self._threads.append(thread)
            self._changed.notify_all()
        return job

    def get(self, key: str) -> Job | None:
        """The job of ``key`` (active or finished), or ``None`` when there is none."""
        with self._changed:
            return self._jobs.get(key)

    def active(self) -> list[Job]:
        """Queued and running jobs, in the order they were started (the order they run)."""
        with self._changed:
            return sorted((j for j in self._jobs.values() if j.is_active),
                          key=lambda j: j.job_id)

    def forget(self, key: str) -> None:
        """Drop the finished job of ``key`` (an active one is kept)."""
        with self._changed:
            job = self._jobs.get(key)
            if job is not None and not job.is_active:
                del self._jobs[key]

    def wait(self, key: str, timeout_s: float) -> Job:
        """Block until the job of ``key`` has finished and return it.

        Raises
        ------
        KeyError
            when there is no job of that key.
        TimeoutError
            when it is still queued or running after ``timeout_s`` seconds.
        """
        with self._changed:
            finished = self._changed.wait_for(
                lambda: key not in self._jobs or not self._jobs[key].is_active, timeout_s)
            if key not in self._jobs:
                raise KeyError(f"no job {key!r}")
            if not finished:
                raise TimeoutError(f"job {key!r} still {self._jobs[key].status} after "
                                   f"{timeout_s} s")
            return self._jobs[key]

    def _update(self, job_id: int, key: str, *, running_only: bool = False,
                **changes: object) -> None:
        with self._changed:
            job = self._jobs.get(key)
            if job is None or job.job_id != job_id:  # forgotten or replaced meanwhile
                return
            if running_only and job.status != "running":  # progress reported after the end
                return
            self._jobs[key] = replace(job, **changes)  # type: ignore[arg-type]
            if "finished_s" in changes:
                self._prune()
            self._changed.notify_all()

    def _prune(self) -> None:
        finished = sorted((j for j in self._jobs.values() if not j.is_active),
                          key=lambda j: j.job_id)
        for job in finished[:max(0, len(finished) - self._keep_finished)]:
            del self._jobs[job.key]

    def _work(self) -> None:
        while True:
            job, fn = self._queue.get()
            self._run(job, fn)

    def _run(self, job: Job, fn: Work) -> None:
        key, job_id = job.key, job.job_id

        def progress(fraction: float, text: str) -> None:
            if math.isnan(fraction):
                fraction = 0.0
            self._update(job_id, key, running_only=True, fraction=min(max(fraction, 0.0), 1.0),
                         text=text)

        self._update(job_id, key, status="running", started_s=time.time(), text="Starting…")
        try:
            fn(progress)
        except InputError as e:  # bad input the user can fix; the message names the file
            log.warning("job %s failed: %s", key, e)
            self._update(job_id, key, status="failed", error=str(e), finished_s=time.time())
        except Exception as e:  # a bug: keep the worker alive, show the type, log the traceback
            log.exception("job %s failed", key)
            self._update(job_id, key, status="failed", error=f"{type(e).__name__}: {e}",
                         finished_s=time.time())
        else:
            self._update(job_id, key, status="done", fraction=1.0, text="Done",
                         finished_s=time.time())


#: The process-wide registry used by the app (one worker: the server has few cores).
_RUNNER = JobRunner()


def start(key: str, fn: Work, label: str) -> Job:
    """:meth:`JobRunner.start` on the process-wide registry."""
    return _RUNNER.start(key, fn, label)


def get(key: str) -> Job | None:
    """:meth:`JobRunner.get` on the process-wide registry."""
    return _RUNNER.get(key)


def active() -> list[Job]:
    """:meth:`JobRunner.active` on the process-wide registry."""
    return _RUNNER.active()


def forget(key: str) -> None:
    """:meth:`JobRunner.forget` on the process-wide registry."""
    _RUNNER.forget(key)


def wait(key: str, timeout_s: float) -> Job:
    """:meth:`JobRunner.wait` on the process-wide registry."""
    return _RUNNER.wait(key, timeout_s)
