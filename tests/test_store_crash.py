"""kill -9 in the middle of a save: the library stays as it was (or holds the finished entry)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from core.store import ALL, TMP_MARK, Store

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import os, sys, time
    import torch
    from PIL import Image
    from core.store import Store

    root, stage, marker, what = sys.argv[1:5]

    def hook(s):
        if s == stage:
            open(marker, "w").close()
            time.sleep(600)  # the parent kills us here

    m = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    sd = {m + ".lora_A.weight": torch.randn(8, 64), m + ".lora_B.weight": torch.randn(64, 8)}
    store = Store(root, fault_hook=hook)
    if what == "adapter":
        store.save_adapter(owner="alice", name="in-flight", method="dreambooth", base_model="tiny",
                           state_dict=sd, configs={"unet": {"r": 8, "lora_alpha": 8}},
                           samples=[Image.new("RGB", (64, 64), (i * 60, 0, 0)) for i in range(3)])
    elif what == "candidates":
        rnd = int(open(os.path.join(root, "round_id")).read())
        store.add_candidates(rnd, "alice", [Image.new("RGB", (32, 32)) for _ in range(4)])
    open(marker + ".done", "w").close()
    time.sleep(600)
""")


def run_and_kill(tmp_path: Path, root: Path, stage: str, what: str = "adapter") -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    marker = tmp_path / f"marker-{stage}"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, str(script), str(root), stage, str(marker), what], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"child exited early: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("child never reached the stage")
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


def assert_clean(root: Path, store: Store) -> None:
    assert store.check() == []
    assert [r[0] for r in store._query("PRAGMA integrity_check")] == ["ok"]
    leftovers = [p for d in ("adapters", "images", "exports") for p in (root / d).rglob("*") if TMP_MARK in p.name]
    assert leftovers == []
    for a in store.list_adapters(ALL):
        assert a.path.is_file() and all(s.file.path.is_file() for s in a.samples)
    on_disk = {p.relative_to(root).as_posix() for d in ("adapters", "images") for p in (root / d).iterdir()}
    assert on_disk == {r[0] for r in store._query("SELECT path FROM files")}


@pytest.mark.parametrize("stage", ["file_written", "files_placed", "before_commit"])
def test_kill_during_adapter_save_leaves_library_as_it_was(tmp_path, stage):
    root = tmp_path / "data"
    with Store(root) as s:
        s.save_adapter(owner="alice", name="existing", method="dreambooth", base_model="tiny",
                       state_dict={"unet.x.lora_A.weight": __import__("torch").zeros(2, 4),
                                   "unet.x.lora_B.weight": __import__("torch").zeros(4, 2)})
        before = s.stats()
    run_and_kill(tmp_path, root, stage)
    # the killed process left its debris behind
    debris = [p for d in ("adapters", "images") for p in (root / d).iterdir()]
    assert len(debris) > 1
    with Store(root) as s:
        assert s.last_recovery.ran
        assert [a.name for a in s.list_adapters(ALL)] == ["existing"]
        assert s.stats() == before
        assert_clean(root, s)


def test_kill_right_after_commit_keeps_the_complete_entry(tmp_path):
    root = tmp_path / "data"
    Store(root).close()
    run_and_kill(tmp_path, root, "committed")
    with Store(root) as s:
        (a,) = s.list_adapters("alice")
        assert a.name == "in-flight" and len(a.samples) == 3
        sd, _ = s.load_adapter(a.id, "alice")
        assert sd["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"].shape == (8, 64)
        assert_clean(root, s)


def test_kill_while_adding_candidates_keeps_ratings_and_round(tmp_path):
    from PIL import Image

    root = tmp_path / "data"
    with Store(root) as s:
        loop = s.create_loop(owner="alice", style_image=Image.new("RGB", (16, 16)), published=True)
        rnd = s.add_round(loop.id, "alice")
        (c,) = s.add_candidates(rnd.id, "alice", [Image.new("RGB", (16, 16))])
        s.rate(c.id, "bob", -1)
        (root / "round_id").write_text(str(rnd.id))
    run_and_kill(tmp_path, root, "files_placed", what="candidates")
    (root / "round_id").unlink()
    with Store(root) as s:
        assert [x.id for x in s.candidates(rnd.id, "alice")] == [c.id]
        assert s.my_ratings(rnd.id, "bob") == {c.id: -1}
        assert_clean(root, s)
