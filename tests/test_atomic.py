"""The one atomic writer: a failed write leaves the old file and no temporary; overwriting needs force."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmtoolkit.atomic import replacing
from dmtoolkit.errors import StoreError


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "result.h5"
    out.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with replacing(out, force=True) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["result.h5"]


def test_success_replaces_and_refusal_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "result.npz"
    with replacing(out, force=False, fsync=True, suffix=".tmp.npz") as tmp:
        assert tmp.name.endswith(".tmp.npz") and tmp.parent == out.parent
        tmp.write_text("new")
    assert out.read_text() == "new"
    with pytest.raises(StoreError, match="already exists; pass --force"):
        with replacing(out, force=False):
            pytest.fail("the block must not run when the output exists")
    assert out.read_text() == "new"
