"""Visitor identity: tokens this server issued and signed are the only ones accepted."""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from core import identity
from core.errors import UserError
from tabs.common import AppContext, owner_key


class Req:
    def __init__(self, user=None, session="s1", host="10.0.0.1", forwarded=None):
        self.username, self.session_hash = user, session
        self.client = SimpleNamespace(host=host)
        self.headers = {"x-forwarded-for": forwarded} if forwarded else {}


def test_issued_tokens_verify_and_name_their_owner(tmp_path):
    t = identity.issue(tmp_path)
    ident = identity.verify(tmp_path, t)
    assert ident.kind == "visitor" and len(ident.subject) == 32
    assert ident.owner == f"visitor:{ident.subject}"
    assert identity.issue(tmp_path) != t  # a fresh id each time
    hf = identity.issue(tmp_path, "hf", "ada-lovelace")
    assert identity.verify(tmp_path, hf).owner == "hf:ada-lovelace"


def test_forged_edited_and_foreign_tokens_are_refused(tmp_path):
    t = identity.issue(tmp_path)
    _, kind, subject, sig = t.split(".")
    other = tmp_path / "other-install"
    forged = [
        "0123456789abcdef0123456789abcdef",                                 # a bare id (the old scheme)
        f"v1.{kind}.{subject}.{'0' * 32}",                                  # invented signature
        f"v1.{kind}.{'f' * 32}.{sig}",                                      # someone else's id, my signature
        f"v1.hf.admin.{sig}",                                               # another kind
        t[:-1] + ("0" if t[-1] != "0" else "1"),                            # one digit changed
        identity.issue(other),                                              # another installation's token
        t + " ", " " + t, t.upper(), "", "v1", None, 42, ["x"], {"a": 1},
    ]
    for bad in forged:
        with pytest.raises(UserError, match="not valid"):
            identity.verify(tmp_path, bad)


def test_a_huge_token_is_refused_before_any_work(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(identity, "_key", lambda d: calls.append(d) or b"k")
    started = time.perf_counter()
    with pytest.raises(UserError):
        identity.verify(tmp_path, "v1.visitor." + "a" * 20_000_000)
    assert time.perf_counter() - started < 0.5
    assert calls == []  # not even the key was read


def test_owner_keys(tmp_path):
    t = identity.issue(tmp_path)
    owner = identity.verify(tmp_path, t).owner
    assert owner_key(Req(), t, shared=False, data_dir=tmp_path) == "local"        # private: one person
    assert owner_key(Req(), t, shared=True, data_dir=tmp_path) == owner
    assert owner_key(Req(), None, shared=True, data_dir=tmp_path) == "session:s1"  # no token: this page only
    assert owner_key(Req("ada"), t, shared=True, data_dir=tmp_path) == "user:ada"  # a login wins
    long_session = owner_key(Req(session="x" * 10_000), None, shared=True, data_dir=tmp_path)
    assert long_session.startswith("session:") and len(long_session) <= 48
    with pytest.raises(UserError, match="not valid"):
        owner_key(Req(), "v1", shared=True, data_dir=tmp_path)   # an invented id is no owner


def ctx_for(tmp_path, engine=None):
    return AppContext(engine=engine, data_dir=tmp_path, args=SimpleNamespace(multi_user=True, proxy_hops=0))


def test_page_load_keeps_a_valid_token_and_replaces_anything_else(tmp_path, monkeypatch):
    ctx = ctx_for(tmp_path)
    monkeypatch.setattr(ctx, "legacy_owner_exists", lambda owner: False)
    t = ctx.assign_visitor(None, Req())
    assert identity.verify(tmp_path, t).kind == "visitor"
    assert ctx.assign_visitor(t, Req()) == t
    for bad in ("v1.visitor.abc.def", "0123456789abcdef0123456789abcdef", "x" * 1000):
        fresh = ctx.assign_visitor(bad, Req())
        assert fresh != bad and identity.verify(tmp_path, fresh).kind == "visitor"


def test_hugging_face_sign_in_names_the_owner_and_sign_out_drops_it(tmp_path, monkeypatch):
    ctx = ctx_for(tmp_path)
    monkeypatch.setattr(ctx, "legacy_owner_exists", lambda owner: False)
    anon = ctx.assign_visitor(None, Req())
    ada = ctx.assign_visitor(anon, Req(), SimpleNamespace(preferred_username="ada"))
    assert identity.verify(tmp_path, ada).owner == "hf:ada"
    assert ctx.assign_visitor(ada, Req(), SimpleNamespace(preferred_username="ada")) == ada
    bob = ctx.assign_visitor(ada, Req(), SimpleNamespace(preferred_username="bob"))
    assert identity.verify(tmp_path, bob).owner == "hf:bob"
    after = ctx.assign_visitor(bob, Req(), None)  # signed out: an anonymous visitor again
    assert identity.verify(tmp_path, after).kind == "visitor"


def test_an_old_unsigned_id_keeps_its_work_only_if_it_has_some(tmp_path, monkeypatch):
    ctx = ctx_for(tmp_path)
    legacy = "0123456789abcdef0123456789abcdef"
    monkeypatch.setattr(ctx, "legacy_owner_exists", lambda owner: owner == f"visitor:{legacy}")
    kept = ctx.assign_visitor(legacy, Req())
    assert identity.verify(tmp_path, kept).owner == f"visitor:{legacy}"
    other = "fedcba9876543210fedcba9876543210"
    assert identity.verify(tmp_path, ctx.assign_visitor(other, Req())).owner != f"visitor:{other}"


def test_new_tokens_are_rate_limited_per_address(tmp_path):
    ctx = ctx_for(tmp_path)
    from tabs.common import VISITOR_TOKENS_PER_HOUR

    for _ in range(VISITOR_TOKENS_PER_HOUR):
        ctx.new_visitor_token(Req(host="10.0.0.7"))
    with pytest.raises(UserError, match="Too many"):
        ctx.new_visitor_token(Req(host="10.0.0.7"))
    ctx.new_visitor_token(Req(host="10.0.0.8"))  # another address is not affected


def test_client_address_behind_a_trusted_proxy():
    from tabs.common import client_address

    r = Req(host="172.16.0.1", forwarded="6.6.6.6, 203.0.113.9")
    assert client_address(r, 0) == "172.16.0.1"        # no proxy trusted: the peer
    assert client_address(r, 1) == "203.0.113.9"       # what the one trusted proxy saw
    assert client_address(Req(host="172.16.0.1"), 1) == "172.16.0.1"  # no header: the peer


def test_browser_secret_is_stable_and_not_the_signing_key(tmp_path):
    a = identity.browser_secret(tmp_path)
    assert a == identity.browser_secret(tmp_path) and len(a) == 32
    from core.files import install_key

    assert a.encode() != install_key(tmp_path) and a not in identity.issue(tmp_path)
    (tmp_path / ".visitor-secret").write_text("legacy-secret\n")
    assert identity.browser_secret(tmp_path) == "legacy-secret"  # browsers' stored tokens still decrypt
