"""Per-study access with sign-in (``MS_DASH_ACCESS_FILE``): the policy and the app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from ms_core.foundation.errors import InputError
from ms_core.study.access import load_policy, principals

APP = Path(__file__).resolve().parents[1] / "app.py"


def _policy_file(tmp_path: Path, studies: list[dict[str, Any]]) -> Path:
    path = tmp_path / "access.json"
    path.write_text(json.dumps({"studies": studies}))
    return path


def test_levels_follow_the_nearest_entry_and_write_implies_read(tmp_path: Path) -> None:
    policy = load_policy(_policy_file(tmp_path, [
        {"path": str(tmp_path / "data"), "read": ["group:neuro"]},
        {"path": str(tmp_path / "data" / "trial-a"), "read": ["sub:42"],
         "write": ["alice@example.org"]},
    ]))
    alice = {"email": "alice@example.org", "sub": "1"}
    neuro = {"email": "bob@example.org", "groups": ["neuro", "staff"]}
    trial_a = tmp_path / "data" / "trial-a"
    assert policy.level(trial_a, alice) == "write"
    assert policy.level(trial_a / "x" / "..", {"sub": "42"}) == "read"
    # The nearest entry decides: trial-a's does not name the neuro group.
    assert policy.level(trial_a, neuro) == "none"
    assert policy.level(tmp_path / "data" / "trial-b", neuro) == "read"
    assert policy.level(tmp_path / "data" / "trial-b", alice) == "none"
    assert policy.level(tmp_path / "elsewhere", alice) == "none"
    assert policy.level(trial_a, {}) == "none"  # nobody signed in
    assert principals(neuro) == {"bob@example.org", "group:neuro", "group:staff"}


@pytest.mark.parametrize("studies, problem", [
    ({"path": "/x"}, "expected"),
    ([{"read": ["a"]}], r"studies\[0\] needs a 'path'"),
    ([{"path": "/x", "write": "alice"}], r"studies\[0\].write must be a list"),
])
def test_a_malformed_access_file_is_refused_naming_it(tmp_path: Path, studies: Any,
                                                      problem: str) -> None:
    path = tmp_path / "access.json"
    path.write_text(json.dumps({"studies": studies}))
    with pytest.raises(InputError, match=problem) as e:
        load_policy(path)
    assert str(path) in str(e.value)


def _app(study: Path, monkeypatch: pytest.MonkeyPatch, claims: dict[str, Any] | None
         ) -> AppTest:
    from ui import helpers as ui_helpers

    monkeypatch.setenv("MS_DASH_STUDY", str(study))
    monkeypatch.setattr(ui_helpers, "user_claims", lambda: claims)
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    return at


def test_the_app_opens_a_study_only_for_those_the_access_file_names(
        small_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MS_DASH_ACCESS_FILE", str(_policy_file(tmp_path, [
        {"path": str(small_study), "read": ["group:readers"], "write": ["alice@example.org"]}])))
    writer = _app(small_study, monkeypatch, {"email": "alice@example.org"})
    assert not writer.exception and not writer.error
    assert "Segment this visit" in [b.label for b in writer.button]
    reader = _app(small_study, monkeypatch, {"email": "bob@example.org", "groups": ["readers"]})
    assert not reader.exception and reader.title[0].value.startswith("Patient")
    assert "Segment this visit" not in [b.label for b in reader.button]  # read-only access
    reader.switch_page("pages/import_data.py").run()
    assert any("may read this study but not change it" in i.value for i in reader.info)
    for claims in ({"email": "mallory@example.org"}, None):
        stranger = _app(small_study, monkeypatch, claims)
        assert not stranger.exception
        assert any("no access to this study" in e.value for e in stranger.error)
        assert not stranger.title  # no page ran
