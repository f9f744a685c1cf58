"""The audit trail: append-only records, a killed writer's line never read back, filtering."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from ms_core.foundation.errors import InputError
from ms_core.study import audit


def test_records_are_appended_read_back_and_filtered_by_study(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    a, b = tmp_path / "study-a", tmp_path / "study-b"
    audit.record("opened", user="local:ana", study=a, participant_id="sub-01",
                 session_id="ses-02", path=log)
    audit.record("compared", user="ana@example.org", study=b / "x" / "..", participant_id="sub-03",
                 session_id="ses-02", detail="ses-01 -> ses-02", path=log)
    audit.record("exported", user="local:ana", study=a, participant_id="sub-01",
                 detail="report html", path=log)
    table = audit.read_log(log)
    assert list(table.columns) == list(audit.FIELDS) and len(table) == 3
    assert list(table.action) == ["opened", "compared", "exported"]
    only_a = audit.read_log(log, study=a)
    assert list(only_a.action) == ["opened", "exported"] and set(only_a.study) == {str(a)}
    assert audit.read_log(log, study=b).detail.iloc[0] == "ses-01 -> ses-02"  # ".." resolved
    assert (log.stat().st_mode & 0o777) == 0o600  # only the server's user reads it


def test_a_line_cut_by_a_killed_writer_is_never_read_as_a_record(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    audit.record("opened", user="u", study=tmp_path, path=log)
    whole = log.read_bytes()
    second = json.dumps({**json.loads(whole), "action": "segmented"}).encode() + b"\n"
    for cut in (len(second) - 1, len(second) // 2, 5):  # killed mid-write, at any byte
        log.write_bytes(whole + second[:cut])
        assert list(audit.read_log(log).action) == ["opened"], cut
        audit.record("imported", user="u", study=tmp_path, path=log)  # the log goes on
        assert list(audit.read_log(log).action) == ["opened", "imported"], cut
        assert log.read_bytes().endswith(b"\n")


def test_malformed_lines_and_foreign_fields_are_skipped(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    rec = audit.record("opened", user="u", study=tmp_path, path=log)
    with open(log, "a", encoding="ascii") as f:
        f.write("not json\n")
        f.write(json.dumps({**rec, "image": [1, 2, 3]}) + "\n")
        f.write(json.dumps({**rec, "action": "deleted"}) + "\n")
    assert len(audit.read_log(log)) == 1
    assert audit.read_log(tmp_path / "absent.jsonl").empty


def test_unknown_actions_and_long_details_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="audit action must be one of"):
        audit.record("viewed", user="u", study=tmp_path, path=tmp_path / "a.jsonl")
    with pytest.raises(InputError, match="at most 200"):
        audit.record("opened", user="u", study=tmp_path, detail="x" * 201,
                     path=tmp_path / "a.jsonl")
    assert not (tmp_path / "a.jsonl").exists()


def _append_many(args: tuple[str, int]) -> None:
    path, n = args
    for i in range(n):
        audit.record("opened", user=f"worker-{i}", study="/s", path=Path(path))


def test_concurrent_writers_never_interleave_records(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        pool.map(_append_many, [(str(log), 40)] * 3)
    lines = log.read_bytes().splitlines()
    assert len(lines) == 120 and len(audit.read_log(log)) == 120


def test_the_default_log_follows_the_environment(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MS_DASH_AUDIT_LOG", str(tmp_path / "x.jsonl"))
    assert audit.audit_log_path() == tmp_path / "x.jsonl"
    monkeypatch.delenv("MS_DASH_AUDIT_LOG")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert audit.audit_log_path() == tmp_path / "state" / "ms-dash" / "audit.jsonl"


def test_the_cli_records_batch_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from ms_core.services import batch, cli

    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("MS_DASH_AUDIT_LOG", str(log))
    result = batch.BatchResult((), __import__("pandas").DataFrame(), (), tmp_path / "r.html", 1.0)
    monkeypatch.setattr(batch, "run_batch", lambda root, config, progress: result)
    assert cli.main(["batch", str(tmp_path), "--stages", "segment,track"]) == 0
    (rec,) = audit.read_log(log).to_dict("records")
    assert rec["action"] == "segmented" and rec["study"] == str(tmp_path.resolve())
    assert rec["detail"] == "batch CLI: 0 patients, stages segment,track, 0 failures"
    assert rec["user"].startswith("local:")
