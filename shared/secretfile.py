"""Secrets at rest: a file holding a secret is created owner-only (0600) before any byte is written.

`open(O_CREAT | O_EXCL | O_NOFOLLOW, 0o600)` creates a new file with that mode in one step: never an
existing file whose mode is looser, never through a symlink planted at the path, never a moment in
which the secret sits in a file others may read (write-then-chmod has such a moment).
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path


def create_secret(path: Path, data: bytes) -> None:
    """Create `path` (mode 0600) holding `data`; FileExistsError if anything is there already."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def replace_secret(path: Path, data: bytes) -> None:
    """Write `data` to `path` as a new 0600 file renamed over any old one: an existing file's mode
    (say 0644 from an older version) never applies to the new secret, and readers see old or new."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    create_secret(tmp, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
