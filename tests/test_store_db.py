"""The store's database side: privacy, feedback loops and ratings, atomic images, recovery."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import UserError
from core.store import ALL, CandidateScore, Store, combine_ratings


def lora_sd(seed: int = 0, rank: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    m = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    return {f"{m}.lora_A.weight": torch.randn(rank, 64, generator=g),
            f"{m}.lora_B.weight": torch.randn(64, rank, generator=g)}


def img(color=(200, 30, 30), size=(48, 32)) -> Image.Image:
    return Image.new("RGB", size, color)


@pytest.fixture
def root(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def store(root):
    s = Store(root)
    yield s
    s.close()


def save(store, owner="alice", name="a", **kw):
    return store.save_adapter(owner=owner, name=name, method=kw.pop("method", "dreambooth"), base_model="tiny",
                              state_dict=kw.pop("state_dict", lora_sd()), configs={"unet": {"r": 2, "lora_alpha": 2}},
                              **kw)


# --------------------------------------------------------------------------- privacy


def test_visitors_see_only_their_own_entries_and_published_ones(store):
    a = save(store, "alice", "alice-private", samples=[img()])
    b = save(store, "bob", "bob-private")
    assert [x.name for x in store.list_adapters("alice")] == ["alice-private"]
    assert [x.name for x in store.list_adapters("bob")] == ["bob-private"]
    assert store.list_adapters("carol") == []
    with pytest.raises(UserError, match="not found"):
        store.get_adapter(a.id, "bob")
    with pytest.raises(UserError, match="not found"):
        store.load_adapter(a.id, "bob")
    with pytest.raises(UserError, match="not found"):
        store.export(a.id, "bob")
    with pytest.raises(UserError, match="not found"):
        store.get_file(a.samples[0].file.id, "bob")
    with pytest.raises(UserError):
        store.delete_adapter(a.id, "bob")
    store.publish_adapter(a.id, "alice")
    assert {x.name for x in store.list_adapters("bob")} == {"alice-private", "bob-private"}
    assert store.list_adapters("bob", include_published=False)[0].id == b.id
    assert store.get_file(a.samples[0].file.id, "bob").path.is_file()  # samples follow the adapter
    sd, _ = store.load_adapter(a.id, "bob")
    assert torch.equal(sd["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"],
                       lora_sd()["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"])
    with pytest.raises(UserError, match="owner"):
        store.delete_adapter(a.id, "bob")  # visible, but not bob's
    with pytest.raises(UserError, match="owner"):
        store.publish_adapter(a.id, "bob", False)
    with pytest.raises(UserError, match="owner"):
        store.update_adapter(a.id, "bob", name="mine now")
    store.publish_adapter(a.id, "alice", False)
    assert [x.name for x in store.list_adapters("bob")] == ["bob-private"]
    with pytest.raises(TypeError):
        store.list_adapters(None)  # no accidental "see everything"


def test_images_are_private_until_published(store):
    f = store.save_image(np.zeros((8, 8, 3), np.uint8), owner="alice")
    assert f.path.is_file() and Image.open(f.path).size == (8, 8)
    assert [x.id for x in store.list_files("alice", kind="output")] == [f.id]
    assert store.list_files("bob") == []
    with pytest.raises(UserError):
        store.get_file(f.id, "bob")
    with pytest.raises(UserError):
        store.delete_file(f.id, "bob")
    store.delete_file(f.id, "alice")
    assert not f.path.exists() and store.check() == []


def test_names_unique_per_owner_metadata_and_delete(store):
    a1 = save(store, "alice", "style", method="styledrop", hyperparameters={"lr": 1e-4}, steps=400,
              extra={"descriptor": "watercolor"}, samples=[(img(), "a cat in watercolor style"), img((0, 0, 255))])
    a2 = save(store, "alice", "style")
    b1 = save(store, "bob", "style")
    assert (a1.name, a2.name, b1.name) == ("style", "style (2)", "style")
    assert a1.method == "styledrop" and a1.hyperparameters == {"lr": 1e-4} and a1.steps == 400 and a1.rank == 2
    assert a1.extra == {"descriptor": "watercolor"} and a1.created > 0 and not a1.published
    assert [s.prompt for s in a1.samples] == ["a cat in watercolor style", ""]
    assert all(max(Image.open(s.file.path).size) <= 256 for s in a1.samples)
    assert store.find_adapter("style", "alice").id == a1.id
    assert store.list_adapters("alice", method="styledrop")[0].id == a1.id
    files = [a1.path, *(s.file.path for s in a1.samples)]
    store.delete_adapter(a1.id, "alice")
    assert not any(p.exists() for p in files)
    assert [x.id for x in store.list_adapters("alice")] == [a2.id]
    assert store.check() == []


def test_library_survives_a_restart(root):
    with Store(root) as s:
        a = save(s, "alice", "kept", samples=[img()])
    with Store(root) as s:
        again = s.get_adapter(a.id, "alice")
        assert again.name == "kept" and again.path.is_file() and len(again.samples) == 1
        assert s.check() == []


def test_failed_save_leaves_nothing(store, root):
    def boom(stage):
        if stage == "before_commit":
            raise RuntimeError("disk on fire")

    save(store, "alice", "before")
    store.fault_hook = boom
    with pytest.raises(RuntimeError):
        save(store, "alice", "doomed", samples=[img()])
    with pytest.raises(RuntimeError):
        store.save_image(img(), owner="alice")
    store.fault_hook = None
    assert [a.name for a in store.list_adapters(ALL)] == ["before"]
    assert store.stats()["files"] == 1 and store.check() == []
    assert len(list((root / "adapters").iterdir())) == 1 and list((root / "images").iterdir()) == []


def test_recover_removes_temp_and_orphan_files_and_dangling_rows(root):
    with Store(root) as s:
        keep = save(s, "alice", "keep")
        gone = save(s, "alice", "gone", samples=[img()])
        sample = gone.samples[0].file.path
    os.unlink(gone.path)  # a file lost behind the store's back
    (root / "adapters" / ".x.safetensors.tmp-123").write_bytes(b"half")
    (root / "images" / "orphan.png").write_bytes(b"png?")
    with Store(root, recover=False) as s:
        problems = s.check()
        assert any("missing file" in p for p in problems)
        assert any("temp file" in p for p in problems) and any("unreferenced" in p for p in problems)
    with Store(root) as s:
        rep = s.last_recovery
        assert rep.ran and rep.temp_files_removed and "images/orphan.png" in rep.orphan_files_removed
        assert any("adapter" in r for r in rep.rows_dropped)
        assert [a.id for a in s.list_adapters(ALL)] == [keep.id]
        assert not sample.exists()  # the dropped adapter's thumbnails went with it
        assert s.check() == []


def test_recovery_waits_while_another_store_holds_the_folder(root):
    with Store(root) as first:
        (root / "images" / "in-flight.png").write_bytes(b"...")  # e.g. another process mid-save
        with Store(root) as second:
            assert not second.last_recovery.ran
            assert (root / "images" / "in-flight.png").exists()
        save(first, "alice", "x")
    with Store(root) as alone:
        assert alone.last_recovery.ran and not (root / "images" / "in-flight.png").exists()


def test_image_sets_cache(store):
    assert store.get_image_set("tiny|a dog|4|64") == []
    paths = store.put_image_set("tiny|a dog|4|64", [img((i * 40, 0, 0)) for i in range(4)])
    assert store.get_image_set("tiny|a dog|4|64") == paths and all(p.is_file() for p in paths)
    assert store.get_image_set("tiny|a dog|4|64", "anyone") == paths
    new = store.put_image_set("tiny|a dog|4|64", [img()])
    assert store.get_image_set("tiny|a dog|4|64") == new and not any(p.exists() for p in paths)
    assert store.check() == []


# --------------------------------------------------------------------------- feedback loops


def make_round(store, owner="alice", n=4, published=False):
    loop = store.create_loop(owner=owner, style_image=img((10, 200, 10), (64, 64)), name="melting",
                             content_description="a house", style_descriptor="melting golden 3d",
                             published=published)
    a = save(store, owner, "round-1", method="styledrop")
    r = store.add_round(loop.id, owner, adapter_id=a.id, metrics={"clip_text": 0.25})
    cands = store.add_candidates(r.id, owner, [(img((i * 50, 0, 0)), f"a thing {i} in melting golden 3d style", i)
                                               for i in range(n)])
    return loop, r, cands


def test_loop_rounds_candidates_and_ratings_persist(root):
    with Store(root) as s:
        loop, r1, cands = make_round(s)
        assert loop.style_image.is_file() and Image.open(loop.style_image).size == (64, 64)
        assert [c.position for c in cands] == [0, 1, 2, 3] and cands[2].seed == 2
        s.update_round(r1.id, "alice", metrics={"clip_style": 0.7})
        s.set_candidate_scores(cands[0].id, "alice", {"clip_text": 0.3})
        s.rate(cands[0].id, "alice", +1)
        s.rate(cands[1].id, "alice", -1)
        s.rate(cands[1].id, "alice", +1)  # changed her mind: upsert, not a second vote
        s.rate(cands[2].id, "alice", +1)
        s.rate(cands[2].id, "alice", 0)  # withdrawn
        r2 = s.add_round(loop.id, "alice", metrics={"clip_text": 0.31})
        assert r2.number == 2
    with Store(root) as s:  # a server restart shows the loop where it was
        rounds = s.rounds(loop.id, "alice")
        assert [r.number for r in rounds] == [1, 2]
        assert rounds[0].metrics == {"clip_text": 0.25, "clip_style": 0.7}
        assert s.candidates(r1.id, "alice")[0].scores == {"clip_text": 0.3}
        assert s.my_ratings(r1.id, "alice") == {cands[0].id: 1, cands[1].id: 1}
        sc = s.scores(r1.id, "alice")
        assert sc[cands[1].id] == CandidateScore(cands[1].id, 1, 0) and sc[cands[3].id].votes == 0
        assert [c.id for c in s.liked(r1.id, "alice")] == [cands[0].id, cands[1].id]
        s.delete_adapter(rounds[0].adapter_id, "alice")  # the round keeps its metrics and ratings
        assert s.get_round(r1.id, "alice").adapter_id is None
        assert s.get_round(r1.id, "alice").metrics["clip_style"] == 0.7 and s.stats()["ratings"] == 2
        assert s.check() == []


def test_several_raters_combine_without_overwriting(store):
    loop, r, c = make_round(store, published=True)
    store.rate(c[0].id, "browser-1", +1)
    store.rate(c[0].id, "browser-2", +1)
    store.rate(c[1].id, "browser-1", +1)
    store.rate(c[1].id, "browser-2", -1)
    store.rate(c[1].id, "alice", -1)
    store.rate(c[2].id, "browser-2", -1)
    store.rate_many({c[3].id: +1}, "clip")  # automatic feedback under its own rater key
    assert store.my_ratings(r.id, "browser-1") == {c[0].id: 1, c[1].id: 1}
    assert store.my_ratings(r.id, "browser-2") == {c[0].id: 1, c[1].id: -1, c[2].id: -1}
    sc = store.scores(r.id, "browser-1")
    assert (sc[c[0].id].net, sc[c[1].id].net, sc[c[2].id].net, sc[c[3].id].net) == (2, -1, -1, 1)
    liked = [x.id for x in store.liked(r.id, "alice")]
    assert liked == [c[0].id, c[3].id]  # disliked and tied candidates never enter the next round
    assert [x.id for x in store.liked(r.id, "alice", exclude_raters=["clip"])] == [c[0].id]
    assert [x.id for x in store.liked(r.id, "alice", raters=["clip"])] == [c[3].id]
    assert [x.id for x in store.liked(r.id, "alice", min_net=2)] == [c[0].id]


def test_loop_privacy(store):
    loop, r, c = make_round(store, owner="alice")
    with pytest.raises(UserError, match="not found"):
        store.rate(c[0].id, "bob", +1)
    with pytest.raises(UserError, match="not found"):
        store.candidates(r.id, "bob")
    assert store.list_loops("bob") == []
    store.publish_loop(loop.id, "alice")
    store.rate(c[0].id, "bob", +1)
    assert [x.id for x in store.list_loops("bob")] == [loop.id]
    assert store.get_file(store.list_files("alice", kind="candidate")[0].id, "bob")  # images follow the loop
    with pytest.raises(UserError, match="owner"):
        store.add_round(loop.id, "bob")
    with pytest.raises(UserError, match="owner"):
        store.add_candidates(r.id, "bob", [img()])
    with pytest.raises(UserError, match="owner"):
        store.delete_loop(loop.id, "bob")
    store.delete_loop(loop.id, "alice")
    assert store.stats()["ratings"] == 0 and store.stats()["candidates"] == 0 and store.check() == []
    assert len(store.list_adapters("alice")) == 1  # the round's adapter stays in the library


def test_concurrent_ratings_are_never_lost(root):
    """8 threads on two connections (as two server processes would be) upsert ratings at once."""
    with Store(root) as s1, Store(root) as s2:
        _, r, cands = make_round(s1, n=6, published=True)
        ids = [c.id for c in cands]
        raters = [f"browser-{i}" for i in range(8)]
        errors = []

        def work(i, rater):
            st = (s1, s2)[i % 2]
            try:
                for rep in range(3):  # each rater flips its mind; the last value must win
                    for j, cid in enumerate(ids):
                        st.rate(cid, rater, 1 if (i + j + rep) % 2 == 0 else -1)
            except Exception as exc:  # noqa: BLE001  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i, rt)) for i, rt in enumerate(raters)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert s1.stats()["ratings"] == len(raters) * len(ids)
        for i, rater in enumerate(raters):
            assert s2.my_ratings(r.id, rater) == {cid: 1 if (i + j + 2) % 2 == 0 else -1
                                                  for j, cid in enumerate(ids)}
        sc = s1.scores(r.id, "alice")
        assert all(sc[cid].votes == len(raters) for cid in ids)


def test_combine_ratings_rule():
    rows = [(1, "a", 1), (1, "b", 1), (1, "a", -1), (2, "a", -1), (3, "c", 1)]
    got = combine_ratings(rows)
    assert got[1] == CandidateScore(1, 1, 1) and got[1].net == 0
    assert got[2].net == -1 and got[3].net == 1
    with pytest.raises(ValueError):
        combine_ratings([(1, "a", 2)])


def test_a_damaged_database_gives_a_clear_error(root):
    root.mkdir(parents=True)
    (root / "store.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(UserError, match="cannot be opened"):
        Store(root)
