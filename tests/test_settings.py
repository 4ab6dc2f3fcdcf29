"""The settings object: environment prefix, validation messages, and the README table kept in sync."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings, get_settings, settings_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EMOSERVE_MODEL_ROOT", str(tmp_path))
    monkeypatch.setenv("EMOSERVE_MAX_BATCH", "8")
    monkeypatch.setenv("EMOSERVE_PROVIDERS", '["CPUExecutionProvider"]')
    s = get_settings()
    assert (s.model_root, s.max_batch, s.providers) == (tmp_path, 8, ["CPUExecutionProvider"])
    assert get_settings(max_batch=4).max_batch == 4


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("detector_threshold", 1.5, "less than or equal to 1"),
        ("model_mirror", "/nonexistent/mirror", "does not exist"),
        ("classifier", "bad/name", "invalid model name"),
        ("providers", ["NoSuchProvider"], "CPUExecutionProvider"),
        ("max_batch", 0, "greater than or equal to 1"),
    ],
)
def test_validation_messages(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**{field: value})  # type: ignore[arg-type]


def test_readme_lists_every_setting() -> None:
    text = README.read_text(encoding="utf-8")
    assert settings_table() in text, "README's settings table is stale: paste `python -m service.settings`"
