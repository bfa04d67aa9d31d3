"""The store's feedback loops (StyleDrop, issue 7): loops, their numbered rounds, the rounds'
candidates and the ratings on them. A mixin of `Store` (core/store.py): it uses the store's
transactions, staged image saves and visibility rules; the tables are in the store's schema.

A loop (style image, descriptors, owner) has numbered rounds (each with its adapter and
metrics), a round has candidates (image, prompt, seed, scores), and a candidate has at most one
rating (+1/-1) per rater, upserted, so several people rating the same published loop never
overwrite each other. `scores`/`liked` combine them with the net-score rule (`combine_ratings`).
"""
from __future__ import annotations

import contextlib
import sqlite3
from typing import Any, Iterable, Mapping, Sequence

from .errors import UserError
from .store_base import ALL, Candidate, CandidateScore, Loop, Round, combine_ratings, from_json, now, to_json


class LoopsMixin:
    """Feedback loops, rounds, candidates and ratings of `Store`."""

    def _loop_from_row(self, r: sqlite3.Row) -> Loop:
        return Loop(r["id"], r["name"], r["owner"], bool(r["published"]), r["base_model"],
                    self._abs(r["spath"]) if r["spath"] else None, r["content_description"],
                    r["style_descriptor"], from_json(r["extra"]), r["created"])

    def create_loop(self, *, owner: str, style_image: Any, name: str = "", content_description: str = "",
                    style_descriptor: str = "", base_model: str = "", extra: Mapping | None = None,
                    published: bool = False) -> Loop:
        """A new feedback loop with its style image (stored full size, as PNG)."""
        with self._saving() as staged:
            row = self._stage_image(staged, style_image, kind="style", owner=owner, published=published)

            def body(c):
                return c.execute(
                    "INSERT INTO loops(name, owner, published, base_model, style_file_id, content_description,"
                    " style_descriptor, extra, created) VALUES (?,?,?,?,?,?,?,?,?)",
                    (name, owner, int(bool(published)), base_model, row["id"], content_description,
                     style_descriptor, to_json(extra), now())).lastrowid
            lid = self._commit_staged(staged, body)
        return self.get_loop(lid, ALL)

    def get_loop(self, loop_id: int, viewer: Any) -> Loop:
        cond, args = self._visible(viewer, "l")
        rows = self._query("SELECT l.*, f.path AS spath FROM loops l LEFT JOIN files f ON f.id = l.style_file_id "
                           f"WHERE l.id = ? AND {cond}", (loop_id, *args))
        if not rows:
            raise UserError("That feedback loop was not found (it may have been deleted, or be private).")
        return self._loop_from_row(rows[0])

    def list_loops(self, viewer: Any) -> list[Loop]:
        cond, args = self._visible(viewer, "l")
        rows = self._query("SELECT l.*, f.path AS spath FROM loops l LEFT JOIN files f ON f.id = l.style_file_id "
                           f"WHERE {cond} ORDER BY l.created DESC, l.id DESC", args)
        return [self._loop_from_row(r) for r in rows]

    def publish_loop(self, loop_id: int, viewer: Any, published: bool = True) -> Loop:
        """Let everyone see (and rate) the loop, its style image and candidates (owner only)."""
        lp = self.get_loop(loop_id, viewer)
        self._check_owner(lp.owner, viewer, "feedback loop")
        with self._tx() as c:
            c.execute("UPDATE loops SET published = ? WHERE id = ?", (int(published), lp.id))
            c.execute("UPDATE files SET published = ? WHERE id = (SELECT style_file_id FROM loops WHERE id = ?) "
                      "OR id IN "
                      "(SELECT c.file_id FROM candidates c JOIN rounds r ON r.id = c.round_id WHERE r.loop_id = ?)",
                      (int(published), lp.id, lp.id))
        return self.get_loop(loop_id, viewer)

    def delete_loop(self, loop_id: int, viewer: Any, *, delete_adapters: bool = False) -> None:
        """Delete a loop with its rounds, candidates, ratings and images (owner only)."""
        lp = self.get_loop(loop_id, viewer)
        self._check_owner(lp.owner, viewer, "feedback loop")
        files = [r[0] for r in self._query(
            "SELECT c.file_id FROM candidates c JOIN rounds r ON r.id = c.round_id WHERE r.loop_id = ? "
            "UNION SELECT style_file_id FROM loops WHERE id = ? AND style_file_id IS NOT NULL", (lp.id, lp.id))]
        adapters = [r[0] for r in self._query(
            "SELECT adapter_id FROM rounds WHERE loop_id = ? AND adapter_id IS NOT NULL", (lp.id,))]
        with self._tx() as c:
            c.execute("DELETE FROM loops WHERE id = ?", (lp.id,))
        self._delete_files(files)
        if delete_adapters:
            for aid in adapters:
                with contextlib.suppress(UserError):
                    self.delete_adapter(aid, viewer)

    def delete_round(self, round_id: int, viewer: Any, *, delete_adapter: bool = False) -> None:
        """Delete a round with its candidates, ratings and images (owner only); with
        `delete_adapter`, its adapter too (an unfinished round: nothing of it stays)."""
        row, lp = self._round_loop(round_id, viewer)
        self._check_owner(lp.owner, viewer, "feedback loop")
        files = [r[0] for r in self._query("SELECT file_id FROM candidates WHERE round_id = ?", (row["id"],))]
        with self._tx() as c:
            c.execute("DELETE FROM rounds WHERE id = ?", (row["id"],))
        self._delete_files(files)
        if delete_adapter and row["adapter_id"] is not None:
            with contextlib.suppress(UserError):
                self.delete_adapter(row["adapter_id"], viewer)

    def _round_from_row(self, r: sqlite3.Row) -> Round:
        return Round(r["id"], r["loop_id"], r["number"], r["adapter_id"], from_json(r["metrics"]),
                     from_json(r["extra"]), r["created"])

    def add_round(self, loop_id: int, viewer: Any, *, adapter_id: int | None = None,
                  metrics: Mapping | None = None, extra: Mapping | None = None) -> Round:
        """Append round number max+1 to a loop (owner only); `adapter_id` may be set later."""
        lp = self.get_loop(loop_id, viewer)
        self._check_owner(lp.owner, viewer, "feedback loop")
        if adapter_id is not None:
            self.get_adapter(adapter_id, viewer)
        with self._tx() as c:
            n = c.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM rounds WHERE loop_id = ?", (lp.id,)).fetchone()[0]
            rid = c.execute("INSERT INTO rounds(loop_id, number, adapter_id, metrics, extra, created) "
                            "VALUES (?,?,?,?,?,?)",
                            (lp.id, n, adapter_id, to_json(metrics), to_json(extra), now())).lastrowid
        return self.get_round(rid, viewer)

    def _round_loop(self, round_id: int, viewer: Any) -> tuple[sqlite3.Row, Loop]:
        rows = self._query("SELECT * FROM rounds WHERE id = ?", (round_id,))
        if not rows:
            raise UserError("That round was not found.")
        try:
            lp = self.get_loop(rows[0]["loop_id"], viewer)
        except UserError:
            raise UserError("That round was not found.") from None
        return rows[0], lp

    def get_round(self, round_id: int, viewer: Any) -> Round:
        return self._round_from_row(self._round_loop(round_id, viewer)[0])

    def rounds(self, loop_id: int, viewer: Any) -> list[Round]:
        """All rounds of a loop, in order, each with its adapter id and metrics."""
        self.get_loop(loop_id, viewer)
        return [self._round_from_row(r) for r in
                self._query("SELECT * FROM rounds WHERE loop_id = ? ORDER BY number", (loop_id,))]

    def update_round(self, round_id: int, viewer: Any, *, adapter_id: int | None = None,
                     metrics: Mapping | None = None, extra: Mapping | None = None) -> Round:
        """Set the round's adapter and/or merge into its metrics / extra (owner only)."""
        row, lp = self._round_loop(round_id, viewer)
        self._check_owner(lp.owner, viewer, "feedback loop")
        if adapter_id is not None:
            self.get_adapter(adapter_id, viewer)
        with self._tx() as c:
            cur = c.execute("SELECT metrics, extra FROM rounds WHERE id = ?", (round_id,)).fetchone()
            if adapter_id is not None:
                c.execute("UPDATE rounds SET adapter_id = ? WHERE id = ?", (adapter_id, round_id))
            if metrics:
                c.execute("UPDATE rounds SET metrics = ? WHERE id = ?",
                          (to_json({**from_json(cur["metrics"]), **metrics}), round_id))
            if extra:
                c.execute("UPDATE rounds SET extra = ? WHERE id = ?",
                          (to_json({**from_json(cur["extra"]), **extra}), round_id))
        return self.get_round(round_id, viewer)

    def add_candidates(self, round_id: int, viewer: Any, items: Sequence[Any]) -> list[Candidate]:
        """Store a round's generated candidates atomically (owner only).

        `items`: images, or (image, prompt) / (image, prompt, seed) tuples, or dicts with keys
        image, prompt, seed, scores.
        """
        row, lp = self._round_loop(round_id, viewer)
        self._check_owner(lp.owner, viewer, "feedback loop")
        norm = []
        for it in items:
            if isinstance(it, dict):
                norm.append((it["image"], it.get("prompt", ""), it.get("seed"), it.get("scores") or {}))
            elif isinstance(it, tuple):
                norm.append((it[0], it[1] if len(it) > 1 else "", it[2] if len(it) > 2 else None, {}))
            else:
                norm.append((it, "", None, {}))
        with self._saving() as staged:
            rows = [self._stage_image(staged, im, kind="candidate", owner=lp.owner, published=lp.published)
                    for im, *_ in norm]

            def body(c):
                start = c.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM candidates WHERE round_id = ?",
                                  (round_id,)).fetchone()[0]
                ids = []
                for i, (r, (_, prompt, seed, scores)) in enumerate(zip(rows, norm)):
                    ids.append(c.execute(
                        "INSERT INTO candidates(round_id, position, file_id, prompt, seed, scores, created) "
                        "VALUES (?,?,?,?,?,?,?)",
                        (round_id, start + i, r["id"], prompt, seed, to_json(scores), now())).lastrowid)
                return ids
            ids = self._commit_staged(staged, body)
        byid = {c.id: c for c in self.candidates(round_id, viewer)}
        return [byid[i] for i in ids]

    def candidates(self, round_id: int, viewer: Any) -> list[Candidate]:
        self._round_loop(round_id, viewer)
        rows = self._query("SELECT c.*, f.path AS fpath FROM candidates c JOIN files f ON f.id = c.file_id "
                           "WHERE c.round_id = ? ORDER BY c.position", (round_id,))
        return [Candidate(r["id"], r["round_id"], r["position"], self._abs(r["fpath"]), r["prompt"], r["seed"],
                          from_json(r["scores"]), r["created"]) for r in rows]

    def _candidate_loop(self, candidate_id: int, viewer: Any) -> tuple[sqlite3.Row, Loop]:
        rows = self._query("SELECT c.*, r.loop_id FROM candidates c JOIN rounds r ON r.id = c.round_id "
                           "WHERE c.id = ?", (candidate_id,))
        if not rows:
            raise UserError("That candidate image was not found.")
        try:
            return rows[0], self.get_loop(rows[0]["loop_id"], viewer)
        except UserError:
            raise UserError("That candidate image was not found.") from None

    def candidate_loop(self, candidate_id: int, viewer: Any) -> Loop:
        """The loop a candidate belongs to, if the viewer may see it (else "not found")."""
        return self._candidate_loop(candidate_id, viewer)[1]

    def candidate_round(self, candidate_id: int, viewer: Any) -> int:
        """The round a candidate belongs to, if the viewer may see its loop (else "not found")."""
        return self._candidate_loop(candidate_id, viewer)[0]["round_id"]

    def set_candidate_scores(self, candidate_id: int, viewer: Any, scores: Mapping[str, float]) -> None:
        """Merge automatic scores (e.g. {"clip_text": .31, "clip_style": .72}) into a candidate."""
        row, lp = self._candidate_loop(candidate_id, viewer)
        self._check_owner(lp.owner, viewer, "feedback loop")
        with self._tx() as c:
            cur = c.execute("SELECT scores FROM candidates WHERE id = ?", (candidate_id,)).fetchone()
            c.execute("UPDATE candidates SET scores = ? WHERE id = ?",
                      (to_json({**from_json(cur["scores"]), **scores}), candidate_id))

    def rate(self, candidate_id: int, rater: str, value: int, *, viewer: Any = None) -> None:
        """Record `rater`'s thumbs up (+1) / down (-1) on a candidate; 0 withdraws it.

        One rating per rater per candidate (upsert); other raters' ratings are untouched. Anyone
        who can see the loop may rate (its owner; everyone once it is published). Automatic
        pickers rate under their own key, e.g. "clip", so human and CLIP feedback combine;
        `viewer` (default: the rater) is whose visibility is checked, so a loop's owner can
        record an automatic picker's votes on a private loop.
        """
        self.rate_many({candidate_id: value}, rater, viewer=viewer)

    def rate_many(self, ratings: Mapping[int, int], rater: str, *, viewer: Any = None) -> None:
        """Several of one rater's ratings in one transaction ({candidate_id: -1/0/+1})."""
        if not isinstance(rater, str) or not rater:
            raise ValueError("rater key required")
        for cid, v in ratings.items():
            if v not in (-1, 0, 1):
                raise UserError("A rating is thumbs up (+1) or thumbs down (-1).")
            self._candidate_loop(cid, rater if viewer is None else viewer)
        with self._tx() as c:
            for cid, v in ratings.items():
                if v == 0:
                    c.execute("DELETE FROM ratings WHERE candidate_id = ? AND rater = ?", (cid, rater))
                else:
                    c.execute("INSERT INTO ratings(candidate_id, rater, value, time) VALUES (?,?,?,?) "
                              "ON CONFLICT(candidate_id, rater) DO UPDATE SET value = excluded.value, "
                              "time = excluded.time", (cid, rater, int(v), now()))

    def my_ratings(self, round_id: int, rater: str) -> dict[int, int]:
        """{candidate_id: value} of this rater's ratings in a round (to redraw their thumbs)."""
        self._round_loop(round_id, rater)
        return {r[0]: r[1] for r in self._query(
            "SELECT t.candidate_id, t.value FROM ratings t JOIN candidates c ON c.id = t.candidate_id "
            "WHERE c.round_id = ? AND t.rater = ?", (round_id, rater))}

    def scores(self, round_id: int, viewer: Any, *, raters: Iterable[str] | None = None,
               exclude_raters: Iterable[str] = ()) -> dict[int, CandidateScore]:
        """Combined ratings per candidate of a round (net-score rule; every candidate listed).

        `raters` restricts to some raters (e.g. only "clip"), `exclude_raters` leaves some out.
        Rater keys are never returned, only counts.
        """
        self._round_loop(round_id, viewer)
        rows = self._query("SELECT t.candidate_id, t.rater, t.value FROM ratings t JOIN candidates c "
                           "ON c.id = t.candidate_id WHERE c.round_id = ?", (round_id,))
        allowed = set(raters) if raters is not None else None
        excluded = set(exclude_raters)
        combined = combine_ratings((r[0], r[1], r[2]) for r in rows
                                   if (allowed is None or r[1] in allowed) and r[1] not in excluded)
        ids = [r[0] for r in self._query("SELECT id FROM candidates WHERE round_id = ?", (round_id,))]
        return {i: combined.get(i, CandidateScore(i, 0, 0)) for i in ids}

    def liked(self, round_id: int, viewer: Any, *, min_net: int = 1, **kw) -> list[Candidate]:
        """The candidates whose net score (ups - downs over all raters) is at least `min_net`:
        the training set of the next round (with the style image). Default: more ups than downs."""
        sc = self.scores(round_id, viewer, **kw)
        return [c for c in self.candidates(round_id, viewer) if sc[c.id].net >= min_net]
