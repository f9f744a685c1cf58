"""No lost or half-written results: kill mid-write, concurrent runs, inputs untouched; settings.

The write-side guarantees (docs/reliability.md):

- every file is written to a temporary name and renamed (:func:`ms_core.foundation.io.atomic_open`);
- a visit's results are written under its folder lock (:mod:`ms_core.study.locks`), with the old
  ``provenance.json`` removed first and the new one (input, model and output sha256) last;
- :func:`ms_core.segmentation.segment.segmentation_status` counts a result as current only when its
  provenance is complete and every output matches the sha256 it records.

Determinism of the segmentation itself (bit-identical mask on re-run) is tested in
``tests/test_segment.py::test_network_segmentation_is_deterministic_and_finds_lesions``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ms_core.foundation import io, settings
from ms_core.foundation.domain import Visit
from ms_core.foundation.errors import InputError
from ms_core.segmentation import segment
from ms_core.segmentation.segment import (
    OUTPUT_FILES,
    PROVENANCE,
    SegmentationResult,
    SegmentParams,
    segmentation_status,
    write_outputs,
)
from ms_core.study.derivatives import derivatives_dir
from ms_core.study.layout import image_path
from ms_core.study.locks import LOCK_NAME, LockTimeout, folder_lock, is_locked

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path) -> dict[str, bytes]:
    """The visible files of ``folder`` (temporary files and the lock file are hidden)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".")}


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture()
def tiny_visit(tmp_path: Path) -> tuple[Path, Visit]:
    """A one-visit study whose FLAIR is a small random image (no segmentation needed)."""
    root = tmp_path / "study"
    flair = image_path(root, "sub-01", "ses-01", "FLAIR")
    rng = np.random.default_rng(0)
    io.save_volume(flair, rng.random((12, 12, 8), dtype=np.float32) + 1.0,
                   np.diag([1.0, 1.0, 2.0, 1.0]))
    visit = Visit("sub-01", "ses-01", pd.Timestamp("2020-01-01").date(), 2.0, 0, None, None,
                  None, {"FLAIR": flair})
    return root, visit


def _fake_result(seed: int, n_lesions: int, shape: tuple[int, int, int] = (40, 40, 40)
                 ) -> SegmentationResult:
    """A segmentation result big enough that its prob map is written in several chunks."""
    rng = np.random.default_rng(seed)
    prob = rng.random(shape, dtype=np.float32)
    labels = np.zeros(shape, np.int32)
    for i in range(n_lesions):
        labels[2 + 4 * i:4 + 4 * i, 5:8, 5:8] = i + 1
    table = pd.DataFrame({"lesion_id": np.arange(1, n_lesions + 1),
                          "volume_ml": np.full(n_lesions, 0.018)})
    return SegmentationResult(prob, labels, np.diag([1.0, 1.0, 2.0, 1.0]), table, "numpy",
                              None, {"inference": 0.1})


OLD = (SegmentParams(method="baseline", threshold=0.5), _fake_result(1, 2))
NEW = (SegmentParams(method="baseline", threshold=0.6), _fake_result(2, 3))


def _reference_files(tmp_path: Path, visit: Visit, params: SegmentParams,
                     result: SegmentationResult) -> dict[str, bytes]:
    """The files one complete, undisturbed ``write_outputs`` makes (except the provenance,
    whose timestamp differs from run to run)."""
    folder = tmp_path / f"ref_{params.threshold}"
    write_outputs(folder, result, params, {"flair": visit.images["FLAIR"]})
    return {k: v for k, v in _files(folder).items() if k != PROVENANCE}


# ----------------------------------------------------------------------------- kill mid-write
_WRITER = """
import sys, time
from ms_core.foundation import io
target, size = sys.argv[1], int(sys.argv[2])
with io.atomic_open(target) as fh:
    for i in range(size // 65536):
        fh.write(bytes([i % 251]) * 65536)
        fh.flush()
        if i == 4:
            print("writing", flush=True)
        time.sleep(0.002)
print("done", flush=True)
"""


@pytest.mark.parametrize("had_old_file", [True, False])
def test_atomic_writer_killed_mid_write_leaves_old_file_or_nothing(tmp_path: Path,
                                                                   had_old_file: bool) -> None:
    target = tmp_path / "result.bin"
    if had_old_file:
        io.atomic_write_bytes(target, b"old complete result")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target), str(64 << 20)],
                            stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
        time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    if had_old_file:
        assert target.read_bytes() == b"old complete result"
    else:
        assert not target.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert leftovers and all(n.startswith(".result.bin.") and n.endswith(".tmp")
                             for n in leftovers)  # the partial data never has the real name
    # A re-run completes and the stale temporary file can be cleared.
    io.atomic_write_bytes(target, b"new complete result")
    assert target.read_bytes() == b"new complete result"
    assert io.remove_stale_temp_files(tmp_path, ("result.bin",))
    assert [p.name for p in tmp_path.iterdir()] == ["result.bin"]


class _Stepper:
    """Runs ``write_outputs`` in a forked child that pauses after every chunk it writes.

    The parent lets the child take ``n`` steps, then SIGKILLs it while it waits: a kill at
    exactly the n-th point of the write sequence, with the temporary file half written.
    """

    CHUNK = 16 << 10

    def __init__(self, folder: Path, visit: Visit, params: SegmentParams,
                 result: SegmentationResult) -> None:
        self.args = (folder, result, params, {"flair": visit.images["FLAIR"]})

    def _child(self, events: int, go: int) -> None:
        real_open = io.atomic_open

        def step() -> None:
            os.write(events, b".")
            os.read(go, 1)

        def stepping_write(path: Path | str, payload: bytes) -> None:
            with real_open(path) as fh:
                for start in range(0, max(len(payload), 1), self.CHUNK):
                    fh.write(payload[start:start + self.CHUNK])
                    fh.flush()
                    step()
            step()  # renamed

        io.atomic_write_bytes = stepping_write  # type: ignore[assignment]
        write_outputs(*self.args)

    def run(self, kill_after: int | None) -> int:
        """Steps taken; the child is killed after ``kill_after`` steps (``None``: never)."""
        ev_r, ev_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                os.close(ev_r)
                os.close(go_w)
                self._child(ev_w, go_r)
                code = 0
            finally:
                os._exit(code)
        os.close(ev_w)
        os.close(go_r)
        steps = 0
        try:
            while os.read(ev_r, 1):
                steps += 1
                if steps == kill_after:
                    os.kill(pid, signal.SIGKILL)
                    break
                os.write(go_w, b"g")
        finally:
            os.close(ev_r)
            os.close(go_w)
            _, status = os.waitpid(pid, 0)
        if kill_after is None or steps < kill_after:
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        else:
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        return steps


def test_segmentation_killed_at_every_write_step_is_never_taken_as_current(
        tmp_path: Path, tiny_visit: tuple[Path, Visit]) -> None:
    root, visit = tiny_visit
    folder = derivatives_dir(root, visit.participant_id, visit.session_id)
    old_ref = _reference_files(tmp_path, visit, *OLD)
    new_ref = _reference_files(tmp_path, visit, *NEW)
    write_outputs(folder, OLD[1], OLD[0], {"flair": visit.images["FLAIR"]})
    snapshot = tmp_path / "old_snapshot"
    shutil.copytree(folder, snapshot)
    n_steps = _Stepper(folder, visit, *NEW).run(kill_after=None)
    assert n_steps >= 2 * len(OUTPUT_FILES) + 2  # every file, the prob map in several chunks
    for kill_after in range(1, n_steps + 1):
        shutil.rmtree(folder)
        shutil.copytree(snapshot, folder)
        _Stepper(folder, visit, *NEW).run(kill_after)
        old_status = segmentation_status(root, visit, OLD[0])
        new_status = segmentation_status(root, visit, NEW[0])
        assert old_status is None, f"killed at step {kill_after}: old result still current"
        # Every visible file is a complete old or new file, never a partial one.
        for name, data in _files(folder).items():
            if name != PROVENANCE:
                assert data in (old_ref[name], new_ref[name]), (kill_after, name)
        if kill_after < n_steps:  # killed before the provenance was renamed into place
            assert new_status is None, f"killed at step {kill_after}: partial result current"
        else:
            assert new_status is not None
        # A re-run always completes.
        write_outputs(folder, NEW[1], NEW[0], {"flair": visit.images["FLAIR"]})
        assert segmentation_status(root, visit, NEW[0]) is not None
        assert {k: v for k, v in _files(folder).items() if k != PROVENANCE} == new_ref
        assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_status_refuses_partial_provenance_and_altered_outputs(
        tiny_visit: tuple[Path, Visit]) -> None:
    root, visit = tiny_visit
    folder = derivatives_dir(root, visit.participant_id, visit.session_id)
    params, result = OLD
    write_outputs(folder, result, params, {"flair": visit.images["FLAIR"]})
    assert segmentation_status(root, visit, params) is not None
    prov = (folder / PROVENANCE).read_bytes()
    (folder / PROVENANCE).write_bytes(prov[: len(prov) // 2])  # half-written provenance
    assert segmentation_status(root, visit, params) is None
    (folder / PROVENANCE).write_bytes(prov)
    mask = (folder / "lesion_mask.nii.gz").read_bytes()
    (folder / "lesion_mask.nii.gz").write_bytes(mask[:-10])  # truncated output
    assert segmentation_status(root, visit, params) is None
    (folder / "lesion_mask.nii.gz").unlink()  # missing output
    assert segmentation_status(root, visit, params) is None
    (folder / "lesion_mask.nii.gz").write_bytes(mask)
    assert segmentation_status(root, visit, params) is not None


# ----------------------------------------------------------------------------- locks
_HOLDER = """
import sys, time
from ms_core.study.locks import folder_lock
with folder_lock(sys.argv[1], timeout_s=0):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    print(f"releasing at {time.time()!r}", flush=True)
"""


@contextlib.contextmanager
def _holder(folder: Path, hold_s: float) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder), str(hold_s)],
                            stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)


def test_second_process_fails_clearly_or_waits_for_the_lock(tmp_path: Path) -> None:
    folder = tmp_path / "derivatives" / "ms_dash" / "sub-01" / "ses-01"
    with _holder(folder, 1.5) as proc:
        assert is_locked(folder)
        with pytest.raises(LockTimeout) as err, folder_lock(folder, timeout_s=0.2):
            pass
        assert str(folder) in str(err.value) and "another run" in str(err.value)
        assert isinstance(err.value, InputError)
        with folder_lock(folder, timeout_s=60):  # waits for the holder to finish
            acquired_at = time.time()
        assert proc.stdout is not None
        released_at = float(proc.stdout.readline().split()[-1])
        assert acquired_at >= released_at, "got the lock while the other process held it"
    assert not is_locked(folder)


def test_lock_of_a_killed_holder_is_released(tmp_path: Path) -> None:
    with _holder(tmp_path, 60) as proc:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        with folder_lock(tmp_path, timeout_s=5):
            assert (tmp_path / LOCK_NAME).exists()


def test_lock_serialises_threads_and_is_reentrant(tmp_path: Path) -> None:
    """Two browser sessions of one Streamlit server are two threads of one process."""
    failures: list[BaseException] = []

    def other_thread() -> None:
        try:
            with folder_lock(tmp_path, timeout_s=0.1):
                pass
        except LockTimeout as e:
            failures.append(e)

    with folder_lock(tmp_path, timeout_s=0), folder_lock(tmp_path, timeout_s=0):
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
    assert len(failures) == 1
    other_thread()  # free again
    assert len(failures) == 1


def test_concurrent_writers_leave_one_complete_consistent_result(
        tmp_path: Path, tiny_visit: tuple[Path, Visit]) -> None:
    root, visit = tiny_visit
    folder = derivatives_dir(root, visit.participant_id, visit.session_id)
    refs = {p.threshold: _reference_files(tmp_path, visit, p, r) for p, r in (OLD, NEW)}
    pids = []
    for params, result in (OLD, NEW):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for _ in range(6):
                    write_outputs(folder, result, params, {"flair": visit.images["FLAIR"]})
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    current = [p for p, _ in (OLD, NEW) if segmentation_status(root, visit, p) is not None]
    assert len(current) == 1
    files = {k: v for k, v in _files(folder).items() if k != PROVENANCE}
    assert files == refs[current[0].threshold]  # no mix of the two runs


def test_segment_visit_holds_the_visit_lock(monkeypatch: pytest.MonkeyPatch,
                                            tiny_visit: tuple[Path, Visit]) -> None:
    root, visit = tiny_visit
    folder = derivatives_dir(root, visit.participant_id, visit.session_id)
    seen: list[bool] = []

    def fake_segment_files(flair: Path, t1: Path | None, out: Path, *args: object
                           ) -> SegmentationResult:
        seen.append(is_locked(out) and out == folder)
        return OLD[1]

    monkeypatch.setattr(segment, "segment_files", fake_segment_files)
    assert segment.segment_visit(root, visit) is OLD[1]
    assert seen == [True] and not is_locked(folder)


# ----------------------------------------------------------------------------- real run
@pytest.fixture()
def study_root(request: pytest.FixtureRequest) -> Path:
    """The built demo study when present (no cost), else the session's small study."""
    if (DEMO / "participants.tsv").exists():
        return DEMO
    return Path(request.getfixturevalue("small_study"))


def test_segmentation_never_modifies_its_inputs(tmp_path: Path, study_root: Path) -> None:
    from ms_core.study.layout import load_study

    visit = load_study(study_root).visits["sub-01"][0]
    inputs = sorted(visit.images.values())
    before = {p: (_sha(p), p.stat().st_mtime_ns, p.stat().st_mode) for p in inputs}
    out_root = tmp_path / "study"  # results go here; the inputs stay in the source study
    params = SegmentParams(method="baseline")
    segment.segment_visit(out_root, visit, params)
    assert {p: (_sha(p), p.stat().st_mtime_ns, p.stat().st_mode) for p in inputs} == before
    status = segmentation_status(out_root, visit, params)
    assert status is not None
    folder = derivatives_dir(out_root, visit.participant_id, visit.session_id)
    recorded = status["outputs"]
    assert isinstance(recorded, dict)
    assert {k: v["sha256"] for k, v in recorded.items()} == {
        n: _sha(folder / n) for n in OUTPUT_FILES}
    import nibabel as nib

    for name in ("lesion_prob.nii.gz", "lesion_mask.nii.gz"):  # PHI: header text cleared
        hdr = nib.load(folder / name).header
        assert all(hdr[k].item() in (b"", "") for k in io.PHI_FIELDS)
        assert len(hdr.extensions) == 0


# ----------------------------------------------------------------------------- settings
@pytest.mark.parametrize(("value", "expected"), [
    (None, False), ("", False), ("0", False), ("no", False), ("1", True), ("true", True),
    ("YES", True), (" on ", True),
])
def test_read_only_flag(monkeypatch: pytest.MonkeyPatch, value: str | None,
                        expected: bool) -> None:
    if value is None:
        monkeypatch.delenv(settings.READ_ONLY_ENV, raising=False)
    else:
        monkeypatch.setenv(settings.READ_ONLY_ENV, value)
    assert settings.read_only() is expected


def test_require_login_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(settings.REQUIRE_LOGIN_ENV, raising=False)
    assert settings.require_login() is False
    monkeypatch.setenv(settings.REQUIRE_LOGIN_ENV, "1")
    assert settings.require_login() is True


def test_malformed_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.READ_ONLY_ENV, "maybe")
    with pytest.raises(InputError, match="MS_DASH_READ_ONLY"):
        settings.read_only()
    for bad in ("lots", "-5", "0", "inf"):
        monkeypatch.setenv(settings.MAX_VOXELS_ENV, bad)
        with pytest.raises(InputError, match="MS_DASH_MAX_VOXELS"):
            settings.max_voxels()
    monkeypatch.setenv(settings.LOCK_TIMEOUT_ENV, "2.5")
    assert settings.lock_timeout_s() == 2.5
    monkeypatch.delenv(settings.MAX_VOXELS_ENV)
    assert settings.max_voxels() == 512**3 and settings.max_file_bytes() == 2048 << 20


def test_streamlit_config_is_local_and_protected() -> None:
    import tomllib

    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    server = config["server"]
    assert server["address"] == "127.0.0.1"
    assert server["enableXsrfProtection"] is True
    assert server["maxUploadSize"] == 1024
    assert config["browser"]["gatherUsageStats"] is False

