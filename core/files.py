"""Small file helpers shared by the engine's writers.

`atomic_path(path)`: a temporary path in the target's own folder; on a clean exit the file is
(optionally fsynced and) renamed over `path` in one step, on an error it is removed. A killed
process leaves at most a `.<name>.tmp-*` file, never half a file under the real name.

`owner_dirname(data_dir, owner)`: the folder name of an owner's files (visitor id, user name):
a keyed digest (`_<kind>-<hex>`), never the key itself (folders under the data dir are served as
downloads), and not computable from a user name without the installation's secret.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Iterator

TMP_INFIX = ".tmp-"  # core.store's TMP_MARK: what checks and sweeps look for
_KEY_FILE = ".owner-key"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Write to the yielded temp path; it replaces `path` when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_INFIX}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str, *, fsync: bool = False) -> None:
    """`data` (bytes, or text as UTF-8) into `path`, atomically."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


_keys: dict[Path, bytes] = {}


def install_key(data_dir: Path) -> bytes:
    """This installation's secret (owner digests, visitor-token signatures), made once (the first
    writer wins); it stays on the server: no route serves the data dir's own files."""
    path = (Path(data_dir) / _KEY_FILE).resolve()
    if path not in _keys:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f"{_KEY_FILE}{TMP_INFIX}", dir=path.parent)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(16))
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links (some mounted volumes)
                if not path.exists():
                    os.replace(tmp, path)
            finally:
                Path(tmp).unlink(missing_ok=True)
        _keys[path] = path.read_text().strip().encode()
    return _keys[path]


def owner_dirname(data_dir: str | os.PathLike, owner: str) -> str:
    """'_<kind>-<24 hex>' for `owner` (e.g. 'visitor:...' -> '_visitor-...'); the key is kept
    in `<data_dir>/.owner-key` (outside every served folder)."""
    kind = re.sub(r"[^a-z]+", "", owner.partition(":")[0].lower())[:12] or "owner"
    digest = hmac.new(install_key(Path(data_dir)), owner.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"_{kind}-{digest[:24]}"
