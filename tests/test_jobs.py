"""Tests of ms_core.foundation.jobs with real threads; events and barriers order them, not
sleeps."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from ms_core.foundation import jobs
from ms_core.foundation.errors import InputError
from ms_core.foundation.jobs import JobRunner, Progress

WAIT_S = 10.0


class Gate:
    """A job function that reports progress, then waits until the test opens the gate."""

    def __init__(self, fraction: float = 0.4, text: str = "step 2 of 5") -> None:
        self.fraction, self.text = fraction, text
        self.reported = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, progress: Progress) -> None:
        self.calls += 1
        progress(self.fraction, self.text)
        self.reported.set()
        if not self.release.wait(WAIT_S):
            raise TimeoutError("the test never opened the gate")


@pytest.fixture
def runner() -> JobRunner:
    return JobRunner()


def test_progress_is_visible_while_running_then_done(runner: JobRunner) -> None:
    gate = Gate()
    queued = runner.start("segment/sub-01/ses-02", gate, "segmenting sub-01 ses-02")
    assert queued.label == "segmenting sub-01 ses-02" and queued.fraction == 0.0
    assert gate.reported.wait(WAIT_S)
    job = runner.get("segment/sub-01/ses-02")
    assert job is not None
    assert (job.status, job.fraction, job.text) == ("running", 0.4, "step 2 of 5")
    assert job.is_active and job.started_s is not None and job.finished_s is None
    assert [j.key for j in runner.active()] == ["segment/sub-01/ses-02"]
    gate.release.set()
    done = runner.wait("segment/sub-01/ses-02", WAIT_S)
    assert (done.status, done.fraction, done.error) == ("done", 1.0, None)
    assert done.finished_s is not None and done.finished_s >= done.started_s  # type: ignore[operator]
    assert runner.active() == []
    assert runner.get("segment/sub-01/ses-02") == done  # kept so the page can show it


def test_starting_an_active_key_returns_the_same_job(runner: JobRunner) -> None:
    gate, other = Gate(), Gate()
    first = runner.start("analyse/sub-01", gate, "analysing sub-01")
    assert gate.reported.wait(WAIT_S)
    again = runner.start("analyse/sub-01", other, "analysing sub-01 again")
    assert again.job_id == first.job_id and again.label == "analysing sub-01"
    gate.release.set()
    runner.wait("analyse/sub-01", WAIT_S)
    assert gate.calls == 1 and other.calls == 0
    # Once finished, the same key runs again as a new job.
    other.release.set()
    rerun = runner.start("analyse/sub-01", other, "analysing sub-01 again")
    assert rerun.job_id != first.job_id
    assert runner.wait("analyse/sub-01", WAIT_S).status == "done" and other.calls == 1


def test_input_error_message_is_kept_verbatim(runner: JobRunner) -> None:
    path = Path("/study/sub-01/ses-01/anat/sub-01_ses-01_FLAIR.nii.gz")

    def bad_input(progress: Progress) -> None:
        raise InputError(path, "not a NIfTI file")

    runner.start("segment/a", bad_input, "segmenting a")
    job = runner.wait("segment/a", WAIT_S)
    assert job.status == "failed" and not job.is_active
    assert job.error == f"{path}: not a NIfTI file"
    assert job.finished_s is not None


def test_other_errors_name_their_type_and_log_the_traceback(
        runner: JobRunner, caplog: pytest.LogCaptureFixture) -> None:
    def bug(progress: Progress) -> None:
        raise ZeroDivisionError("division by zero")

    with caplog.at_level(logging.ERROR, logger="ms_core.foundation.jobs"):
        runner.start("compare/a", bug, "comparing a")
        job = runner.wait("compare/a", WAIT_S)
    assert job.error == "ZeroDivisionError: division by zero"
    assert any(r.exc_info is not None and "compare/a" in r.getMessage() for r in caplog.records)
    # The worker survives a failed job.
    runner.start("compare/b", lambda progress: None, "comparing b")
    assert runner.wait("compare/b", WAIT_S).status == "done"


def test_jobs_queue_behind_the_running_one_and_run_in_order(runner: JobRunner) -> None:
    order: list[str] = []
    gate = Gate()

    def first(progress: Progress) -> None:
        order.append("a")
        gate(progress)

    def record(name: str) -> jobs.Work:
        return lambda progress: order.append(name)

    runner.start("a", first, "job a")
    assert gate.reported.wait(WAIT_S)
    runner.start("b", record("b"), "job b")
    runner.start("c", record("c"), "job c")
    assert [(j.key, j.status) for j in runner.active()] == [
        ("a", "running"), ("b", "queued"), ("c", "queued")]
    gate.release.set()
    assert runner.wait("c", WAIT_S).status == "done"
    assert order == ["a", "b", "c"]


def test_concurrent_starts_of_one_key_run_the_work_once() -> None:
    runner = JobRunner(workers=2)
    gate = Gate()
    n_threads = 8
    barrier = threading.Barrier(n_threads)
    ids: list[int] = []
    lock = threading.Lock()

    def click() -> None:
        barrier.wait(WAIT_S)
        job = runner.start("segment/same", gate, "segmenting")
        with lock:
            ids.append(job.job_id)

    threads = [threading.Thread(target=click) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert len(ids) == n_threads and len(set(ids)) == 1
    gate.release.set()
    assert runner.wait("segment/same", WAIT_S).status == "done"
    assert gate.calls == 1


def test_many_threads_starting_distinct_keys_each_run_once() -> None:
    runner = JobRunner(workers=2)
    n_threads = 8
    barrier = threading.Barrier(n_threads)
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def work(key: str) -> jobs.Work:
        def run(progress: Progress) -> None:
            for i in range(20):  # many concurrent progress updates
                progress(i / 20, f"{key} {i}")
            with lock:
                counts[key] = counts.get(key, 0) + 1
        return run

    def click(i: int) -> None:
        barrier.wait(WAIT_S)
        runner.start(f"k{i}", work(f"k{i}"), f"job {i}")

    threads = [threading.Thread(target=click, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    finished = [runner.wait(f"k{i}", WAIT_S) for i in range(n_threads)]
    assert all(j.status == "done" and j.fraction == 1.0 for j in finished)
    assert counts == {f"k{i}": 1 for i in range(n_threads)}
    assert len({j.job_id for j in finished}) == n_threads


def test_progress_is_clipped_and_ignored_after_the_end(runner: JobRunner) -> None:
    seen: list[float] = []
    late: list[Progress] = []

    def work(progress: Progress) -> None:
        for value in (-0.5, float("nan"), 1.7):
            progress(value, "x")
            job = runner.get("clip")
            assert job is not None
            seen.append(job.fraction)
        late.append(progress)

    runner.start("clip", work, "clipping")
    assert runner.wait("clip", WAIT_S).status == "done"
    assert seen == [0.0, 0.0, 1.0]
    late[0](0.2, "too late")  # e.g. a helper thread that outlived the job
    job = runner.get("clip")
    assert job is not None and (job.fraction, job.text) == (1.0, "Done")


def test_finished_jobs_are_pruned_and_can_be_forgotten() -> None:
    runner = JobRunner(keep_finished=2)
    for key in ("a", "b", "c"):
        runner.start(key, lambda progress: None, key)
        runner.wait(key, WAIT_S)
    assert runner.get("a") is None  # the oldest finished job was dropped
    assert runner.get("b") is not None and runner.get("c") is not None
    runner.forget("b")
    assert runner.get("b") is None
    gate = Gate()
    runner.start("d", gate, "d")
    runner.forget("d")  # active: kept
    assert runner.get("d") is not None
    gate.release.set()
    runner.wait("d", WAIT_S)


def test_wait_and_argument_errors(runner: JobRunner) -> None:
    with pytest.raises(KeyError, match="no job 'missing'"):
        runner.wait("missing", 0.01)
    gate = Gate()
    runner.start("slow", gate, "slow")
    with pytest.raises(TimeoutError, match="still"):
        runner.wait("slow", 0.01)
    gate.release.set()
    runner.wait("slow", WAIT_S)
    with pytest.raises(ValueError, match="workers and keep_finished must be >= 1"):
        JobRunner(workers=0)


def test_process_wide_registry() -> None:
    key = "test_jobs/process-wide"
    gate = Gate()
    job = jobs.start(key, gate, "process-wide")
    try:
        assert jobs.get(key) is not None
        assert gate.reported.wait(WAIT_S)
        assert key in [j.key for j in jobs.active()]
    finally:
        gate.release.set()
    assert jobs.wait(key, WAIT_S).job_id == job.job_id
    jobs.forget(key)
    assert jobs.get(key) is None
