"""The store: everything a user made, kept under one data folder.

    <root>/store.db          SQLite (WAL, foreign keys): adapters, files, feedback loops, ratings
    <root>/adapters/*.safetensors   LoRA adapters in diffusers' format (see core/lora_format.py)
    <root>/images/*.png      thumbnails, samples, candidates, style images, outputs
    <root>/exports/          kohya/diffusers files made for download (ephemeral)

Crash safety (kill -9 at any point leaves the library as it was, or with the new entry complete):
files are written under a temporary name in their final folder, fsynced and `os.replace`d into
place; only then are their rows inserted, in one SQLite transaction. A crash before the commit
leaves an unreferenced file and perhaps a temp file, which the next store to open the folder
alone deletes (`recover`), along with rows whose file has gone missing. Deleting commits first
and unlinks afterwards, so a crash there also only leaves orphans. Every store holds a shared
`flock` on `<root>/.lock` while open; recovery runs only when it can take the lock exclusively,
so it never deletes the half-saved file of another live process.

Privacy: every entry has an `owner` (a user name or a browser-session key, chosen by the app)
and a `published` flag. Every read takes a `viewer` and shows only the viewer's own entries plus
published ones; changing or deleting needs the owner. A missing id and an id one may not see
give the same "not found" `UserError`. `ALL` as viewer is for maintenance and tests.

`Store` is one class in four files, by concern: this one holds the schema, the plumbing
(transactions, staged atomic saves, visibility), files, image sets, adapters and recovery;
core/store_loops.py the feedback loops (StyleDrop, issue 7: loops, rounds, candidates,
ratings); core/store_exchange.py LoRA import and export; core/store_base.py the records it
returns (re-exported here) and the small helpers they share. Putting an adapter onto a model is
not the store's business: core/adapters.py does that.
"""
from __future__ import annotations

import contextlib

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process recovery guard
    fcntl = None
import hashlib
import logging
import os
import re
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from . import lora_format as lf
from .errors import UserError
from .files import TMP_INFIX
# the records are re-exported: callers import them from core.store
from .store_base import (ALL, Adapter, Candidate, CandidateScore, Loop, RecoveryReport, Round, Sample,  # noqa: F401
                         StyleEntry,
                         StoredFile, combine_ratings, from_json, now, to_json)
from .store_exchange import ExchangeMixin
from .store_loops import LoopsMixin
from .store_styles import StylesMixin

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANAGED_DIRS = ("adapters", "images", "exports")
TMP_MARK = TMP_INFIX  # what atomic writes leave when killed
THUMB_SIDE = 256
SHARED_OWNER = ""  # system-owned, visible to everyone (e.g. the class-image cache)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS files(
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    owner TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS files_owner ON files(owner, kind);
CREATE TABLE IF NOT EXISTS adapters(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    method TEXT NOT NULL,
    base_model TEXT NOT NULL,
    arch TEXT NOT NULL DEFAULT '',
    trigger_words TEXT NOT NULL DEFAULT '',
    class_name TEXT NOT NULL DEFAULT '',
    rank INTEGER,
    steps INTEGER,
    hyperparameters TEXT NOT NULL DEFAULT '{}',
    extra TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    owner TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    file_id INTEGER NOT NULL UNIQUE REFERENCES files(id) ON DELETE CASCADE,
    UNIQUE(owner, name)
);
CREATE TABLE IF NOT EXISTS adapter_samples(
    adapter_id INTEGER NOT NULL REFERENCES adapters(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    prompt TEXT NOT NULL DEFAULT '',
    PRIMARY KEY(adapter_id, position)
);
CREATE TABLE IF NOT EXISTS loops(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    base_model TEXT NOT NULL DEFAULT '',
    style_file_id INTEGER REFERENCES files(id) ON DELETE SET NULL,
    content_description TEXT NOT NULL DEFAULT '',
    style_descriptor TEXT NOT NULL DEFAULT '',
    extra TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds(
    id INTEGER PRIMARY KEY,
    loop_id INTEGER NOT NULL REFERENCES loops(id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    adapter_id INTEGER REFERENCES adapters(id) ON DELETE SET NULL,
    metrics TEXT NOT NULL DEFAULT '{}',
    extra TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    UNIQUE(loop_id, number)
);
CREATE TABLE IF NOT EXISTS candidates(
    id INTEGER PRIMARY KEY,
    round_id INTEGER NOT NULL REFERENCES rounds(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    prompt TEXT NOT NULL DEFAULT '',
    seed INTEGER,
    scores TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    UNIQUE(round_id, position)
);
CREATE TABLE IF NOT EXISTS ratings(
    candidate_id INTEGER NOT NULL REFERENCES candidates(id) ON DELETE CASCADE,
    rater TEXT NOT NULL,
    value INTEGER NOT NULL CHECK (value IN (-1, 1)),
    time REAL NOT NULL,
    PRIMARY KEY(candidate_id, rater)
);
CREATE TABLE IF NOT EXISTS styles(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    base_model TEXT NOT NULL DEFAULT '',
    descriptor TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '',
    adapter_id INTEGER REFERENCES adapters(id) ON DELETE SET NULL,
    reference_prompt TEXT NOT NULL DEFAULT '',
    extra TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    UNIQUE(owner, name)
);
CREATE TABLE IF NOT EXISTS style_files(
    style_id INTEGER NOT NULL REFERENCES styles(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    position INTEGER NOT NULL,
    file_id INTEGER NOT NULL UNIQUE REFERENCES files(id) ON DELETE CASCADE,
    PRIMARY KEY(style_id, role, position)
);
CREATE TABLE IF NOT EXISTS image_sets(
    key TEXT NOT NULL,
    position INTEGER NOT NULL,
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    PRIMARY KEY(key, position)
);
"""


# files that exist only as part of another entry, and that entry is gone
_DEPENDENT_UNUSED = """
SELECT id, path FROM files f WHERE
    (kind = 'sample' AND NOT EXISTS (SELECT 1 FROM adapter_samples s WHERE s.file_id = f.id))
 OR (kind = 'candidate' AND NOT EXISTS (SELECT 1 FROM candidates c WHERE c.file_id = f.id))
 OR (kind = 'style' AND NOT EXISTS (SELECT 1 FROM loops l WHERE l.style_file_id = f.id))
 OR (kind = 'cache' AND NOT EXISTS (SELECT 1 FROM image_sets i WHERE i.file_id = f.id))
 OR (kind = 'adapter' AND NOT EXISTS (SELECT 1 FROM adapters a WHERE a.file_id = f.id))
 OR (kind IN ('style-image', 'style-data') AND NOT EXISTS (SELECT 1 FROM style_files s WHERE s.file_id = f.id))
"""


# --------------------------------------------------------------------------- helpers

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _as_image(img: Any) -> Image.Image:
    if isinstance(img, Image.Image):
        return img
    if isinstance(img, np.ndarray):
        arr = img if img.dtype == np.uint8 else np.clip(img, 0, 255).astype(np.uint8)
        return Image.fromarray(arr)
    if isinstance(img, torch.Tensor):  # CHW or HWC float in [0, 1]
        t = img.detach().cpu().float()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4):
            t = t.permute(1, 2, 0)
        return Image.fromarray((t.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(-1).numpy())
    raise TypeError(f"not an image: {type(img).__name__}")


class _Staged:
    """Files placed in their final folder during one save; unlinked again if the save fails."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.committed = False

    def cleanup(self) -> None:
        if self.committed:  # the rows own these files now
            return
        for r in self.rows:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(r["abs"])


# --------------------------------------------------------------------------- the store

class Store(LoopsMixin, ExchangeMixin, StylesMixin):
    """The adapter library, files and feedback loops under one data folder. Thread-safe."""

    def __init__(self, root: str | os.PathLike, *, recover: bool = True,
                 fault_hook: Callable[[str], None] | None = None) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        for d in MANAGED_DIRS:
            (self.root / d).mkdir(exist_ok=True)
        # Test hook called at named points of a save ("file_written", "files_placed",
        # "committed"); the kill -9 tests block in it.
        self.fault_hook = fault_hook
        self._lock = threading.RLock()
        self._lockfile = open(self.root / ".lock", "a+b")
        self._conn = sqlite3.connect(self.root / "store.db", timeout=30.0, isolation_level=None,
                                     check_same_thread=False)
        try:
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA busy_timeout = 30000")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            with self._tx() as c:
                version = c.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise UserError(f"The data folder {self.root} was written by a newer version of the app "
                                    f"(schema {version}); update the app.")
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            self.close()
            raise UserError(f"The library database {self.root / 'store.db'} cannot be opened ({exc}); move it "
                            "aside to start a new library.") from None
        except BaseException:
            self.close()
            raise
        self.last_recovery = RecoveryReport()
        if recover:
            self.last_recovery = self.recover()
        self._flock("LOCK_SH")

    # ---------------------------------------------------------------- plumbing

    def _flock(self, op: str, nonblocking: bool = False) -> bool:
        if fcntl is None:
            return True
        flags = getattr(fcntl, op) | (fcntl.LOCK_NB if nonblocking else 0)
        try:
            fcntl.flock(self._lockfile, flags)
            return True
        except OSError:
            return False

    def close(self) -> None:
        with self._lock:
            if getattr(self, "_conn", None) is not None:
                self._conn.close()
                self._conn = None
            if not self._lockfile.closed:
                self._flock("LOCK_UN")
                self._lockfile.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _hook(self, stage: str) -> None:
        if self.fault_hook is not None:
            self.fault_hook(stage)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT), serialized in-process by a lock."""
        with self._lock:
            if self._conn is None:
                raise RuntimeError("store is closed")
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
            except BaseException:
                c.execute("ROLLBACK")
                raise
            else:
                c.execute("COMMIT")

    def _query(self, sql: str, args: Sequence = ()) -> list[sqlite3.Row]:
        with self._lock:
            if self._conn is None:
                raise RuntimeError("store is closed")
            return self._conn.execute(sql, args).fetchall()

    @staticmethod
    def _visible(viewer: Any, alias: str = "") -> tuple[str, tuple]:
        p = f"{alias}." if alias else ""
        if viewer is ALL:
            return "1", ()
        if not isinstance(viewer, str):
            raise TypeError("viewer must be an owner key (str) or store.ALL")
        return f"({p}owner = ? OR {p}published = 1)", (viewer,)

    @staticmethod
    def _check_owner(row_owner: str, viewer: Any, what: str) -> None:
        if viewer is not ALL and row_owner != viewer:
            raise UserError(f"Only the owner can change this {what}.")

    def _abs(self, rel: str) -> Path:
        return self.root / rel

    # ---------------------------------------------------------------- files (atomic)

    def _stage(self, staged: _Staged, folder: str, suffix: str, writer: Callable[[Path], None], *,
               kind: str, owner: str, published: bool = False, meta: Mapping | None = None) -> dict:
        """Write a file via `writer(temp_path)`, fsync, and rename it into `folder`; remember it."""
        d = self.root / folder
        name = uuid.uuid4().hex + suffix
        final = d / name
        tmp = d / f".{name}{TMP_MARK}{os.getpid()}"
        try:
            writer(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            self._hook("file_written")
            size = tmp.stat().st_size
            digest = _sha256(tmp)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(d)
        row = {"path": f"{folder}/{name}", "abs": final, "kind": kind, "owner": owner,
               "published": int(bool(published)), "created": now(), "size": size, "sha256": digest,
               "meta": to_json(meta or {})}
        staged.rows.append(row)
        return row

    def _stage_image(self, staged: _Staged, image: Any, *, kind: str, owner: str, published: bool = False,
                     max_side: int | None = None, meta: Mapping | None = None) -> dict:
        img = _as_image(image)
        if max_side and max(img.size) > max_side:
            img = img.copy()
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        if img.mode not in ("RGB", "RGBA", "L", "LA", "P", "I;16", "1"):
            img = img.convert("RGB")
        m = {"width": img.width, "height": img.height, **(meta or {})}
        return self._stage(staged, "images", ".png", lambda p: img.save(p, format="PNG"),
                           kind=kind, owner=owner, published=published, meta=m)

    @staticmethod
    def _insert_file(c: sqlite3.Connection, row: dict) -> int:
        cur = c.execute("INSERT INTO files(path, kind, owner, published, created, size, sha256, meta) "
                        "VALUES (?,?,?,?,?,?,?,?)",
                        (row["path"], row["kind"], row["owner"], row["published"], row["created"],
                         row["size"], row["sha256"], row["meta"]))
        row["id"] = cur.lastrowid
        return cur.lastrowid

    @contextlib.contextmanager
    def _saving(self) -> Iterator[_Staged]:
        """Stage files, then insert rows in one transaction; on any failure unlink staged files."""
        staged = _Staged()
        try:
            yield staged
        except BaseException:
            staged.cleanup()
            raise

    def _commit_staged(self, staged: _Staged, body: Callable[[sqlite3.Connection], Any]) -> Any:
        self._hook("files_placed")
        with self._tx() as c:
            for row in staged.rows:
                self._insert_file(c, row)
            result = body(c)
            self._hook("before_commit")
        staged.committed = True
        self._hook("committed")
        return result

    def _file_from_row(self, r: sqlite3.Row) -> StoredFile:
        return StoredFile(r["id"], self._abs(r["path"]), r["kind"], r["owner"], bool(r["published"]),
                          r["created"], r["size"], r["sha256"], from_json(r["meta"]))

    def save_image(self, image: Any, *, owner: str, kind: str = "output", published: bool = False,
                   max_side: int | None = None, meta: Mapping | None = None) -> StoredFile:
        """Save a PIL image / uint8 array / float tensor as PNG atomically and register it."""
        with self._saving() as staged:
            row = self._stage_image(staged, image, kind=kind, owner=owner, published=published,
                                    max_side=max_side, meta=meta)
            fid = self._commit_staged(staged, lambda c: row.get("id"))
        return self.get_file(fid, ALL)

    def save_thumbnail(self, image: Any, *, owner: str, size: int = THUMB_SIDE, **kw) -> StoredFile:
        """`save_image` downsized to at most `size` pixels on the long side."""
        return self.save_image(image, owner=owner, kind="thumbnail", max_side=size, **kw)

    def save_images(self, images: Sequence[Any], *, owner: str, kind: str = "output",
                    published: bool = False, max_side: int | None = None) -> list[StoredFile]:
        """Several images in one transaction: all are registered or none."""
        with self._saving() as staged:
            rows = [self._stage_image(staged, im, kind=kind, owner=owner, published=published,
                                      max_side=max_side) for im in images]
            self._commit_staged(staged, lambda c: None)
        return [self.get_file(r["id"], ALL) for r in rows]

    def get_file(self, file_id: int, viewer: Any) -> StoredFile:
        cond, args = self._visible(viewer)
        rows = self._query(f"SELECT * FROM files WHERE id = ? AND {cond}", (file_id, *args))
        if not rows:
            raise UserError("That file was not found (it may have been deleted).")
        return self._file_from_row(rows[0])

    def list_files(self, viewer: Any, kind: str | None = None) -> list[StoredFile]:
        cond, args = self._visible(viewer)
        sql = f"SELECT * FROM files WHERE {cond}"
        if kind is not None:
            sql += " AND kind = ?"
            args = (*args, kind)
        return [self._file_from_row(r) for r in self._query(sql + " ORDER BY created DESC, id DESC", args)]

    def delete_file(self, file_id: int, viewer: Any) -> None:
        """Delete a file the viewer owns (and, by cascade, what needs it: sample, candidate)."""
        f = self.get_file(file_id, viewer)
        self._check_owner(f.owner, viewer, "file")
        self._delete_files([file_id])

    def _delete_files(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if not ids:
            return
        with self._tx() as c:
            q = ",".join("?" * len(ids))
            paths = [r["path"] for r in c.execute(f"SELECT path FROM files WHERE id IN ({q})", ids)]
            c.execute(f"DELETE FROM files WHERE id IN ({q})", ids)
        for p in paths:  # after the commit: a crash here only leaves orphans for recover()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._abs(p))

    # ---------------------------------------------------------------- image sets (caches)

    def put_image_set(self, key: str, images: Sequence[Any], *, owner: str = SHARED_OWNER) -> list[Path]:
        """Cache a list of images under `key` (e.g. DreamBooth class images by model/prompt/size).

        Replaces a previous set with the same key. Shared sets (the default) are visible to all.
        """
        old = [r["file_id"] for r in self._query("SELECT file_id FROM image_sets WHERE key = ?", (key,))]
        with self._saving() as staged:
            rows = [self._stage_image(staged, im, kind="cache", owner=owner,
                                      published=owner == SHARED_OWNER) for im in images]

            def body(c):
                c.execute("DELETE FROM image_sets WHERE key = ?", (key,))
                for i, r in enumerate(rows):
                    c.execute("INSERT INTO image_sets(key, position, file_id) VALUES (?,?,?)", (key, i, r["id"]))
            self._commit_staged(staged, body)
        self._delete_files(old)
        return [r["abs"] for r in rows]

    def get_image_set(self, key: str, viewer: Any = SHARED_OWNER) -> list[Path]:
        """The cached images under `key` in order ([] when none)."""
        cond, args = self._visible(viewer, "f")
        rows = self._query("SELECT f.path FROM image_sets s JOIN files f ON f.id = s.file_id "
                           f"WHERE s.key = ? AND {cond} ORDER BY s.position", (key, *args))
        return [self._abs(r["path"]) for r in rows]

    # ---------------------------------------------------------------- adapters

    def save_adapter(self, *, owner: str, name: str, method: str, base_model: str,
                     models: Mapping[str, torch.nn.Module] | None = None, adapter_name: str = "default",
                     state_dict: Mapping[str, torch.Tensor] | None = None,
                     configs: Mapping[str, Any] | None = None,
                     arch: str = "", trigger_words: str | Sequence[str] = "", class_name: str = "",
                     steps: int | None = None, hyperparameters: Mapping | None = None,
                     extra: Mapping | None = None, parts: Mapping[str, Sequence[str]] | None = None,
                     samples: Sequence[Any] = (), published: bool = False) -> Adapter:
        """Save one adapter atomically: safetensors file + sample thumbnails + rows, or nothing.

        Give either `models` ({"unet": unet, "text_encoder": te, ...} carrying the peft adapter
        `adapter_name`; its LoraConfig comes from `model.peft_config` or from `configs`) or
        `state_dict` (canonical keys, see core/lora_format.py) with
        `configs` ({component: LoraConfig or its dict}). `parts` names key subsets by module
        prefix, e.g. B-LoRA {"content": ["unet.up_blocks.0.attentions.0"], "style":
        ["unet.up_blocks.0.attentions.1"]}; the resolved key lists are kept in `extra["parts"]`.
        `samples` are images or (image, prompt) pairs, kept as thumbnails. The name is made
        unique per owner by appending " (2)", " (3)", ...
        """
        if models is not None:
            if state_dict is not None:
                raise ValueError("give models or state_dict, not both")
            sd: dict[str, torch.Tensor] = {}
            cfgs: dict[str, Any] = {}
            for comp, model in models.items():
                cfg = (configs or {}).get(comp) or getattr(model, "peft_config", {}).get(adapter_name)
                if model is None or cfg is None:
                    continue
                sd.update(lf.peft_state_dict(model, comp, adapter_name))
                cfgs[comp] = lf.config_to_dict(cfg)
        elif state_dict is not None:
            sd = {k: v.detach().to("cpu") for k, v in state_dict.items()}
            cfgs = {k: lf.config_to_dict(v) for k, v in (configs or {}).items() if v}
        else:
            raise ValueError("save_adapter needs models or state_dict")
        if not sd:
            raise UserError("There is no trained adapter to save (no LoRA weights found).")
        lf.validate(sd)
        cfgs = {c: v for c, v in cfgs.items() if any(k.startswith(c + ".") for k in sd)}
        extra = dict(extra or {})
        if parts:
            extra["parts"] = self._resolve_parts(sd, parts)
        ranks = [int(v.shape[0]) for k, v in sd.items() if k.endswith(".lora_A.weight")]
        rank = max(set(ranks), key=ranks.count) if ranks else None
        if not isinstance(trigger_words, str):
            trigger_words = ", ".join(trigger_words)
        header = lf.file_metadata(cfgs, {"studio.method": method, "studio.base_model": base_model,
                                         "studio.name": name})
        with self._saving() as staged:
            frow = self._stage(staged, "adapters", ".safetensors",
                               lambda p: lf.write_safetensors(p, sd, header),
                               kind="adapter", owner=owner, published=published)
            srows = []
            for s in samples:
                img, prompt = s if isinstance(s, tuple) else (s, "")
                srows.append((self._stage_image(staged, img, kind="sample", owner=owner, published=published,
                                                max_side=THUMB_SIDE), prompt))

            def body(c):
                unique = self._unique_name(c, owner, name)
                cur = c.execute(
                    "INSERT INTO adapters(name, method, base_model, arch, trigger_words, class_name, rank, steps,"
                    " hyperparameters, extra, created, owner, published, file_id)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (unique, method, base_model, arch, trigger_words, class_name, rank, steps,
                     to_json(hyperparameters), to_json(extra), now(), owner, int(bool(published)), frow["id"]))
                aid = cur.lastrowid
                for i, (r, prompt) in enumerate(srows):
                    c.execute("INSERT INTO adapter_samples(adapter_id, position, file_id, prompt) VALUES (?,?,?,?)",
                              (aid, i, r["id"], prompt))
                return aid
            aid = self._commit_staged(staged, body)
        return self.get_adapter(aid, ALL)

    @staticmethod
    def _resolve_parts(sd: Mapping[str, torch.Tensor], parts: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        seen: dict[str, str] = {}
        for part, prefixes in parts.items():
            keys = sorted(k for k in sd if any(k == p or k.startswith(p.rstrip(".") + ".") for p in prefixes))
            if not keys:
                raise ValueError(f"part {part!r} matches no key of the adapter: {list(prefixes)}")
            for k in keys:
                if k in seen:
                    raise ValueError(f"key {k} is in both parts {seen[k]!r} and {part!r}")
                seen[k] = part
            out[part] = keys
        return out

    @staticmethod
    def _unique_name(c: sqlite3.Connection, owner: str, name: str) -> str:
        name = re.sub(r"[\x00-\x1f\x7f]+", " ", name or "").strip()[:100] or "adapter"
        taken = {r[0] for r in c.execute("SELECT name FROM adapters WHERE owner = ? AND (name = ? OR name LIKE ?)",
                                         (owner, name, name + " (%)"))}
        if name not in taken:
            return name
        i = 2
        while f"{name} ({i})" in taken:
            i += 1
        return f"{name} ({i})"

    def _adapter_rows(self, where: str, args: Sequence) -> list[Adapter]:
        rows = self._query(
            "SELECT a.*, f.path AS fpath, f.size AS fsize, f.sha256 AS fsha FROM adapters a "
            f"JOIN files f ON f.id = a.file_id WHERE {where} ORDER BY a.created DESC, a.id DESC", args)
        if not rows:
            return []
        ids = [r["id"] for r in rows]
        q = ",".join("?" * len(ids))
        samples: dict[int, list[Sample]] = {}
        for s in self._query(f"SELECT s.adapter_id, s.prompt, f.* FROM adapter_samples s JOIN files f "
                             f"ON f.id = s.file_id WHERE s.adapter_id IN ({q}) ORDER BY s.position", ids):
            samples.setdefault(s["adapter_id"], []).append(Sample(self._file_from_row(s), s["prompt"]))
        return [Adapter(r["id"], r["name"], r["method"], r["base_model"], r["arch"], r["trigger_words"],
                        r["class_name"], r["rank"], r["steps"], from_json(r["hyperparameters"]), from_json(r["extra"]),
                        r["created"], r["owner"], bool(r["published"]), self._abs(r["fpath"]), r["fsize"],
                        r["fsha"], tuple(samples.get(r["id"], ()))) for r in rows]

    def owner_exists(self, owner: str) -> bool:
        """Whether `owner` has anything in the store (files, adapters, loops or ratings)."""
        for sql in ("SELECT 1 FROM files WHERE owner = ? LIMIT 1", "SELECT 1 FROM loops WHERE owner = ? LIMIT 1",
                    "SELECT 1 FROM ratings WHERE rater = ? LIMIT 1"):
            if self._query(sql, (owner,)):
                return True
        return False

    def get_adapter(self, adapter_id: int, viewer: Any) -> Adapter:
        """One adapter the viewer may see, or `UserError` "not found"."""
        cond, args = self._visible(viewer, "a")
        found = self._adapter_rows(f"a.id = ? AND {cond}", (adapter_id, *args))
        if not found:
            raise UserError("That adapter was not found (it may have been deleted, or belong to someone else).")
        return found[0]

    def find_adapter(self, name: str, viewer: Any) -> Adapter:
        """By name: the viewer's own first, else a published one."""
        cond, args = self._visible(viewer, "a")
        found = self._adapter_rows(f"a.name = ? AND {cond}", (name, *args))
        if not found:
            raise UserError(f"No adapter named {name!r} was found.")
        own = [a for a in found if viewer is ALL or a.owner == viewer]
        return (own or found)[0]

    def list_adapters(self, viewer: Any, *, method: str | None = None, base_model: str | None = None,
                      arch: str | None = None, include_published: bool = True) -> list[Adapter]:
        """Adapters the viewer owns, plus published ones; newest first; optional filters."""
        if include_published or viewer is ALL:
            cond, args = self._visible(viewer, "a")
        else:
            cond, args = "a.owner = ?", (viewer,)
        for col, val in (("method", method), ("base_model", base_model), ("arch", arch)):
            if val is not None:
                cond += f" AND a.{col} = ?"
                args = (*args, val)
        return self._adapter_rows(cond, args)

    def update_adapter(self, adapter_id: int, viewer: Any, *, name: str | None = None,
                       trigger_words: str | None = None, class_name: str | None = None,
                       extra: Mapping | None = None) -> Adapter:
        """Rename / edit text fields / merge into `extra` (owner only)."""
        a = self.get_adapter(adapter_id, viewer)
        self._check_owner(a.owner, viewer, "adapter")
        with self._tx() as c:
            if name is not None and name != a.name:
                c.execute("UPDATE adapters SET name = ? WHERE id = ?", (self._unique_name(c, a.owner, name), a.id))
            if trigger_words is not None:
                c.execute("UPDATE adapters SET trigger_words = ? WHERE id = ?", (trigger_words, a.id))
            if class_name is not None:
                c.execute("UPDATE adapters SET class_name = ? WHERE id = ?", (class_name, a.id))
            if extra:
                c.execute("UPDATE adapters SET extra = ? WHERE id = ?", (to_json({**a.extra, **extra}), a.id))
        return self.get_adapter(adapter_id, viewer)

    def publish_adapter(self, adapter_id: int, viewer: Any, published: bool = True) -> Adapter:
        """Make an adapter (and its samples) visible to everyone, or private again (owner only)."""
        a = self.get_adapter(adapter_id, viewer)
        self._check_owner(a.owner, viewer, "adapter")
        with self._tx() as c:
            c.execute("UPDATE adapters SET published = ? WHERE id = ?", (int(published), a.id))
            c.execute("UPDATE files SET published = ? WHERE id = (SELECT file_id FROM adapters WHERE id = ?) "
                      "OR id IN (SELECT file_id FROM adapter_samples WHERE adapter_id = ?)",
                      (int(published), a.id, a.id))
        return self.get_adapter(adapter_id, viewer)

    def delete_adapter(self, adapter_id: int, viewer: Any) -> None:
        """Delete an adapter, its file and its samples (owner only). Rounds keep their metrics."""
        a = self.get_adapter(adapter_id, viewer)
        self._check_owner(a.owner, viewer, "adapter")
        ids = [r["file_id"] for r in self._query(
            "SELECT file_id FROM adapters WHERE id = ? UNION SELECT file_id FROM adapter_samples WHERE adapter_id = ?",
            (a.id, a.id))]
        self._delete_files(ids)

    def load_adapter(self, adapter_id: int, viewer: Any, part: str | None = None
                     ) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
        """(canonical state dict, {component: LoraConfig dict}), optionally only one named part."""
        a = self.get_adapter(adapter_id, viewer)
        sd, header = lf.read_safetensors(a.path, max_bytes=1 << 62)
        configs = lf.configs_from_header(header)
        if part is not None:
            keys = a.parts.get(part)
            if keys is None:
                raise UserError(f"The adapter {a.name!r} has no part {part!r} "
                                f"(it has: {', '.join(a.parts) or 'none'}).")
            sd = {k: sd[k] for k in keys}
            configs = self._narrow_configs(sd, configs)
        return sd, configs

    @staticmethod
    def _narrow_configs(sd: Mapping[str, torch.Tensor], configs: Mapping[str, dict]) -> dict[str, dict]:
        out = {}
        for comp, cfg in configs.items():
            mods = [lf.normalize_module_name(comp, m[len(comp) + 1:]) for m in lf.modules_in(sd)
                    if lf.component_of(m) == comp]
            if mods:
                out[comp] = {**cfg, "target_modules": sorted(mods)}
        return out

    # ---------------------------------------------------------------- recovery and checks

    def _referenced(self) -> set[str]:
        return {r[0] for r in self._query("SELECT path FROM files")}

    def _disk_files(self) -> Iterator[tuple[str, Path]]:
        for d in MANAGED_DIRS:
            base = self.root / d
            for dirpath, _, names in os.walk(base):
                for n in names:
                    p = Path(dirpath) / n
                    yield p.relative_to(self.root).as_posix(), p

    def recover(self, force: bool = False) -> RecoveryReport:
        """After a crash: delete temp files and unreferenced files, drop rows whose file is missing.

        Runs only when no other open store holds the folder (exclusive `flock`), unless `force`.
        """
        rep = RecoveryReport()
        got = force or self._flock("LOCK_EX", nonblocking=True)
        if not got:
            return rep
        try:
            rep.ran = True
            refs = self._referenced()
            for rel, p in list(self._disk_files()):
                if TMP_MARK in p.name:
                    rep.temp_files_removed.append(rel)
                elif rel.startswith("exports/") or rel not in refs:
                    rep.orphan_files_removed.append(rel)
                else:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
            for d in MANAGED_DIRS:  # empty export folders
                for dirpath, _dirs, _files in os.walk(self.root / d, topdown=False):
                    if Path(dirpath) != self.root / d and not os.listdir(dirpath):
                        with contextlib.suppress(OSError):
                            os.rmdir(dirpath)
            missing = [(r["id"], r["kind"], r["path"]) for r in self._query("SELECT id, kind, path FROM files")
                       if not self._abs(r["path"]).is_file()]
            if missing:
                with self._tx() as c:
                    for fid, _, _ in missing:
                        c.execute("DELETE FROM files WHERE id = ?", (fid,))  # cascades to adapters, samples, ...
                rep.rows_dropped = [f"{k} {i} {p}" for i, k, p in missing]
            dependent = self._query(_DEPENDENT_UNUSED)  # e.g. thumbnails of a dropped adapter
            if dependent:
                self._delete_files([r["id"] for r in dependent])
                rep.orphan_files_removed += [r["path"] for r in dependent]
            if rep.temp_files_removed or rep.orphan_files_removed or rep.rows_dropped:
                log.warning("store recovery in %s: %s", self.root, rep)
        finally:
            if not force:
                self._flock("LOCK_SH")
        return rep

    def check(self, deep: bool = False) -> list[str]:
        """Problems found, [] when healthy: SQLite integrity and foreign keys, rows whose file is
        missing, temp and unreferenced files; `deep` also verifies every file's sha256."""
        problems = []
        ic = [r[0] for r in self._query("PRAGMA integrity_check")]
        if ic != ["ok"]:
            problems += [f"sqlite integrity: {x}" for x in ic]
        for r in self._query("PRAGMA foreign_key_check"):
            problems.append(f"foreign key: table {r[0]} row {r[1]} -> {r[2]}")
        rows = self._query("SELECT id, kind, path, sha256 FROM files")
        for r in rows:
            p = self._abs(r["path"])
            if not p.is_file():
                problems.append(f"missing file: {r['kind']} {r['id']} {r['path']}")
            elif deep and _sha256(p) != r["sha256"]:
                problems.append(f"corrupt file (checksum): {r['kind']} {r['id']} {r['path']}")
        for r in self._query(_DEPENDENT_UNUSED):
            problems.append(f"file belongs to nothing: {r['path']}")
        refs = {r["path"] for r in rows}
        for rel, p in self._disk_files():
            if TMP_MARK in p.name:
                problems.append(f"temp file: {rel}")
            elif rel not in refs and not rel.startswith("exports/"):
                problems.append(f"unreferenced file: {rel}")
        return problems

    def stats(self) -> dict[str, int]:
        """Row counts per table (for the UI footer and tests)."""
        return {t: self._query(f"SELECT COUNT(*) FROM {t}")[0][0]
                for t in ("files", "adapters", "adapter_samples", "loops", "rounds", "candidates", "ratings",
                          "image_sets", "styles", "style_files")}
