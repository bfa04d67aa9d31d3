"""Who is asking: visitor tokens that this server issues and signs.

On a shared instance (a Space, `--multi-user`) the library keeps each visitor's adapters,
loops, ratings and results apart, so every request that touches the library has to say whose
they are. A browser (or an API client) holds a *visitor token* issued by this server:

    v1.<kind>.<subject>.<signature>

- kind "visitor": an anonymous browser; subject = 32 random hex digits, made here.
- kind "hf": a Hugging Face account, after "Sign in with Hugging Face"; subject = the user name.
- signature: HMAC-SHA256 of "v1.<kind>.<subject>" under the token key, 32 hex digits. The key is
  derived from the installation's secret (`core.files.install_key`, `<data_dir>/.owner-key`),
  which no route serves; so nobody can make a valid token for a subject the server did not
  hand out, and a token invented or edited by hand is refused.

`verify(data_dir, token)` checks the strict format and length first (nothing longer than
`MAX_TOKEN` characters is even parsed), then the signature in constant time, and returns the
`Identity`; anything else raises `UserError`. `Identity.owner` is the owner key the store uses
("visitor:<hex>" or "hf:<name>").
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .files import install_key

VERSION = "v1"
MAX_TOKEN = 160
KINDS = ("visitor", "hf")
_SUBJECT = {"visitor": re.compile(r"[0-9a-f]{32}"),
            # Hugging Face user names: letters, digits, '-', '_' and '.', at most 96 here
            "hf": re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")}
_TOKEN = re.compile(r"v1\.(visitor|hf)\.([A-Za-z0-9._-]{1,96})\.([0-9a-f]{32})")
_LEGACY = re.compile(r"[0-9a-f]{32}")  # the unsigned browser ids of earlier versions
INVALID = ("Your visitor token is not valid (it was not issued by this server, or it was changed). "
           "Reload the page; an API client asks /visitor for a new one.")


@dataclass(frozen=True)
class Identity:
    kind: str      # "visitor" or "hf"
    subject: str   # the random id or the Hugging Face user name

    @property
    def owner(self) -> str:
        """The owner key in the store: "visitor:<hex>" or "hf:<name>"."""
        return f"{self.kind}:{self.subject}"


def _key(data_dir) -> bytes:
    return hmac.new(install_key(Path(data_dir)), b"studio visitor token v1", hashlib.sha256).digest()


def _signature(data_dir, kind: str, subject: str) -> str:
    return hmac.new(_key(data_dir), f"{VERSION}.{kind}.{subject}".encode(), hashlib.sha256).hexdigest()[:32]


def issue(data_dir, kind: str = "visitor", subject: str | None = None) -> str:
    """A new signed token: a fresh anonymous visitor, or (kind "hf") a signed-in account."""
    if kind not in KINDS:
        raise ValueError(f"unknown identity kind {kind!r}")
    subject = secrets.token_hex(16) if subject is None else subject
    if not _SUBJECT[kind].fullmatch(subject):
        raise UserError("That account name cannot be used here.")
    return f"{VERSION}.{kind}.{subject}.{_signature(data_dir, kind, subject)}"


def parse(token) -> tuple[str, str, str] | None:
    """(kind, subject, signature) of a well-formed token, else None (no key needed)."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN:
        return None
    m = _TOKEN.fullmatch(token)
    if m is None or not _SUBJECT[m.group(1)].fullmatch(m.group(2)):
        return None
    return m.group(1), m.group(2), m.group(3)


def verify(data_dir, token) -> Identity:
    """The identity a token was issued for; `UserError` for anything malformed or forged."""
    parts = parse(token)
    if parts is None:
        raise UserError(INVALID)
    kind, subject, sig = parts
    if not hmac.compare_digest(sig, _signature(data_dir, kind, subject)):
        raise UserError(INVALID)
    return Identity(kind, subject)


def is_legacy(value) -> bool:
    """An unsigned browser id of an earlier version (32 hex digits)."""
    return isinstance(value, str) and _LEGACY.fullmatch(value) is not None


def browser_secret(data_dir) -> str:
    """The key Gradio's BrowserState encrypts the token with in the browser's storage. Gradio
    publishes it to every page (by design), so it protects nothing and is no credential: the
    token's own signature is. A secret file of earlier versions is kept, so tokens that
    browsers already hold still decrypt."""
    legacy = Path(data_dir) / ".visitor-secret"
    if legacy.is_file():
        return legacy.read_text().strip()
    return hmac.new(install_key(Path(data_dir)), b"studio browser state", hashlib.sha256).hexdigest()[:32]
