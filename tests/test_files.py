"""core/files.atomic_path: what every writer of results, exports and checkpoints relies on. A
reader sees the old file or the new one, never half of one; a failed write leaves the old file
and no debris."""
from __future__ import annotations

import pytest

from core.files import TMP_INFIX, atomic_path, atomic_write


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if TMP_INFIX in p.name)


def test_a_write_appears_in_one_step(tmp_path):
    target = tmp_path / "icon.svg"
    target.write_text("old")
    with atomic_path(target, fsync=True) as tmp:
        tmp.write_text("new, written in two parts")
        assert target.read_text() == "old"  # a reader meanwhile still gets the whole old file
        assert tmp.parent == target.parent  # same folder: the rename is atomic (no copy across devices)
        assert TMP_INFIX in tmp.name and tmp.name.startswith(".")  # what checks and sweeps look for
    assert target.read_text() == "new, written in two parts"
    assert leftovers(tmp_path) == []
    atomic_write(target, "again")
    assert target.read_text() == "again" and leftovers(tmp_path) == []


@pytest.mark.parametrize("existed", [True, False])
def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path, existed):
    target = tmp_path / "checkpoint.safetensors"
    if existed:
        target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert (target.read_bytes() == b"old") if existed else not target.exists()
    assert leftovers(tmp_path) == []
