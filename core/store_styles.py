"""The store's style entries (issue 18): a style of its own in the library, saved from any tab.

A style entry has a name, an owner (published or not, like an adapter), the base model it was
made with, a text descriptor ("watercolor painting"), the tab it came from, and its forms:
source images (1 to `MAX_STYLE_IMAGES`, stored as PNG), optionally a library adapter that
carries the style (StyleDrop, B-LoRA, an imported LoRA: the adapter keeps its own owner rules)
and a Style-Aligned reference image with its prompt. Derived data is cached with the entry:
`style_cache_get/put` keep small tensors (a DDIM inversion of the reference, keyed by everything
it depends on), at most `MAX_STYLE_CACHE` per entry, the oldest dropped first.

A mixin of `Store` (core/store.py): the tables are in the store's schema, files are staged and
committed with the store's transactions, and a crash leaves nothing half-saved.
"""
from __future__ import annotations

import sqlite3
from typing import Any, Mapping, Sequence

import torch

from .errors import UserError
from .store_base import ALL, StyleEntry, from_json, now, to_json

MAX_STYLE_IMAGES = 8
MAX_STYLE_CACHE = 4
MAX_NAME = 80
MAX_DESCRIPTOR = 300
IMAGE_SIDE = 1024           # source and reference images are kept at most this large
IMAGE, REFERENCE, CACHE = "image", "reference", "cache"   # style_files roles


class StylesMixin:
    """Style entries of `Store`."""

    def _style_from_row(self, r: sqlite3.Row) -> StyleEntry:
        files = self._query("SELECT s.role, f.path FROM style_files s JOIN files f ON f.id = s.file_id "
                            "WHERE s.style_id = ? AND s.role IN (?, ?) ORDER BY s.role, s.position",
                            (r["id"], IMAGE, REFERENCE))
        images = tuple(self._abs(f["path"]) for f in files if f["role"] == IMAGE)
        refs = [self._abs(f["path"]) for f in files if f["role"] == REFERENCE]
        return StyleEntry(r["id"], r["name"], r["owner"], bool(r["published"]), r["base_model"], r["descriptor"],
                          r["source"], r["adapter_id"], r["reference_prompt"], images, refs[0] if refs else None,
                          from_json(r["extra"]), r["created"])

    def save_style(self, *, owner: str, name: str, images: Sequence[Any], descriptor: str = "",
                   base_model: str = "", source: str = "", adapter_id: int | None = None,
                   reference: Any = None, reference_prompt: str = "", extra: Mapping | None = None,
                   published: bool = False) -> StyleEntry:
        """Save a style entry atomically (its images and rows, or nothing). `adapter_id` must be an
        adapter `owner` may use; the name is made unique per owner (" (2)", ...)."""
        name = " ".join(str(name or "").split())[:MAX_NAME]
        if not name:
            raise UserError("Give the style a name.")
        images = list(images)
        if not 1 <= len(images) <= MAX_STYLE_IMAGES:
            raise UserError(f"A style keeps 1 to {MAX_STYLE_IMAGES} source images ({len(images)} given).")
        if adapter_id is not None:
            self.get_adapter(int(adapter_id), owner)          # visible to the owner, or "not found"
        with self._saving() as staged:
            rows = [(IMAGE, i, self._stage_image(staged, im, kind="style-image", owner=owner, published=published,
                                                 max_side=IMAGE_SIDE)) for i, im in enumerate(images)]
            if reference is not None:
                rows.append((REFERENCE, 0, self._stage_image(staged, reference, kind="style-image", owner=owner,
                                                             published=published, max_side=IMAGE_SIDE)))

            def body(c):
                sid = c.execute(
                    "INSERT INTO styles(name, owner, published, base_model, descriptor, source, adapter_id,"
                    " reference_prompt, extra, created) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (self._unique_style_name(c, owner, name), owner, int(bool(published)), base_model,
                     str(descriptor or "")[:MAX_DESCRIPTOR], source, adapter_id,
                     str(reference_prompt or "")[:MAX_DESCRIPTOR * 3], to_json(extra), now())).lastrowid
                for role, pos, row in rows:
                    c.execute("INSERT INTO style_files(style_id, role, position, file_id) VALUES (?,?,?,?)",
                              (sid, role, pos, row["id"]))
                return sid
            sid = self._commit_staged(staged, body)
        return self.get_style(sid, ALL)

    @staticmethod
    def _unique_style_name(c: sqlite3.Connection, owner: str, name: str) -> str:
        taken = {r[0] for r in c.execute("SELECT name FROM styles WHERE owner = ?", (owner,))}
        out, n = name, 2
        while out in taken:
            out, n = f"{name} ({n})", n + 1
        return out

    def get_style(self, style_id: int, viewer: Any) -> StyleEntry:
        """One style entry the viewer may see, or `UserError` "not found"."""
        cond, args = self._visible(viewer)
        rows = self._query(f"SELECT * FROM styles WHERE id = ? AND {cond}", (int(style_id), *args))
        if not rows:
            raise UserError("That style was not found (it may have been deleted, or belong to someone else).")
        return self._style_from_row(rows[0])

    def list_styles(self, viewer: Any, *, base_model: str | None = None) -> list[StyleEntry]:
        """The viewer's style entries and published ones, newest first."""
        cond, args = self._visible(viewer)
        if base_model is not None:
            cond, args = cond + " AND base_model = ?", (*args, base_model)
        rows = self._query(f"SELECT * FROM styles WHERE {cond} ORDER BY created DESC, id DESC", args)
        return [self._style_from_row(r) for r in rows]

    def publish_style(self, style_id: int, viewer: Any, published: bool = True) -> StyleEntry:
        """Let everyone see and use the entry and its images, or make it private again (owner only).
        Its adapter keeps its own setting: publish that too for others to use the adapter form."""
        st = self.get_style(style_id, viewer)
        self._check_owner(st.owner, viewer, "style")
        with self._tx() as c:
            c.execute("UPDATE styles SET published = ? WHERE id = ?", (int(published), st.id))
            c.execute("UPDATE files SET published = ? WHERE id IN (SELECT file_id FROM style_files WHERE style_id = ?)",
                      (int(published), st.id))
        return self.get_style(style_id, viewer)

    def delete_style(self, style_id: int, viewer: Any) -> None:
        """Delete the entry, its images and caches (owner only); its adapter stays in the library."""
        st = self.get_style(style_id, viewer)
        self._check_owner(st.owner, viewer, "style")
        files = [r[0] for r in self._query("SELECT file_id FROM style_files WHERE style_id = ?", (st.id,))]
        with self._tx() as c:
            c.execute("DELETE FROM styles WHERE id = ?", (st.id,))
        self._delete_files(files)

    # ------------------------------------------------------------ derived data (caches)

    def style_cache_get(self, style_id: int, key: str, viewer: Any) -> dict[str, torch.Tensor] | None:
        """The tensors cached under `key` for a style the viewer may see, or None."""
        from safetensors.torch import load_file

        st = self.get_style(style_id, viewer)
        for r in self._query("SELECT f.path, f.meta FROM style_files s JOIN files f ON f.id = s.file_id "
                             "WHERE s.style_id = ? AND s.role = ?", (st.id, CACHE)):
            if from_json(r["meta"]).get("key") == key:
                try:
                    return load_file(str(self._abs(r["path"])))
                except (OSError, RuntimeError, ValueError):       # unreadable: as if not cached
                    return None
        return None

    def style_cache_put(self, style_id: int, key: str, tensors: Mapping[str, torch.Tensor], viewer: Any) -> None:
        """Cache tensors under `key` with a style the viewer may see (its owner owns the file; at
        most `MAX_STYLE_CACHE` per style, the oldest dropped)."""
        from safetensors.torch import save_file

        st = self.get_style(style_id, viewer)
        data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        with self._saving() as staged:
            row = self._stage(staged, "images", ".safetensors", lambda p: save_file(data, str(p)),
                              kind="style-data", owner=st.owner, published=st.published, meta={"key": key})

            def body(c):
                pos = c.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM style_files WHERE style_id = ? "
                                "AND role = ?", (st.id, CACHE)).fetchone()[0]
                c.execute("INSERT INTO style_files(style_id, role, position, file_id) VALUES (?,?,?,?)",
                          (st.id, CACHE, pos, row["id"]))
            self._commit_staged(staged, body)
        old = [r[0] for r in self._query("SELECT file_id FROM style_files WHERE style_id = ? AND role = ? "
                                         "ORDER BY position DESC", (st.id, CACHE))][MAX_STYLE_CACHE:]
        self._delete_files(old)
