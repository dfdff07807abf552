"""A stack's scratch folder is removed when its block ends well, kept (and named) when it did not."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.local.scratch import KEEP_ENV, scratch_dir


def test_removed_after_a_clean_exit(tmp_path: Path) -> None:
    with scratch_dir("unit", parent=str(tmp_path)) as root:
        (root / "pg" / "data").mkdir(parents=True)
        (root / "pg" / "data" / "segment").write_bytes(b"x" * 1024)
        assert root.name.startswith("crm-erp-sync-unit-") and root.parent == tmp_path
    assert not root.exists()


def test_kept_and_named_when_the_block_raised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError, match="the benchmark failed"):
        with scratch_dir("unit", parent=str(tmp_path)) as root:
            (root / "worker.log").write_text("the reason\n", encoding="utf-8")
            raise RuntimeError("the benchmark failed")
    assert (root / "worker.log").read_text(encoding="utf-8") == "the reason\n"
    assert f"kept {root} (it ended with an error)" in capsys.readouterr().err


def test_kept_when_a_test_that_used_it_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with scratch_dir("unit", failed=lambda: True, parent=str(tmp_path)) as root:
        pass
    assert root.is_dir()
    assert f"kept {root} (a test that used it failed)" in capsys.readouterr().err


def test_kept_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEEP_ENV, "1")
    with scratch_dir("unit", parent=str(tmp_path)) as root:
        pass
    assert root.is_dir()


def test_reachable_by_another_user(tmp_path: Path) -> None:
    """PostgreSQL runs as postgres when the tests run as root: it must be able to enter the folder."""
    with scratch_dir("unit", parent=str(tmp_path)) as root:
        assert root.stat().st_mode & 0o777 == 0o755
