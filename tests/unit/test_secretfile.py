"""Secrets at rest: created 0600 with O_EXCL before any byte is written; never through a planted file or link."""
from __future__ import annotations

import os
import stat

import pytest

from services.audit.keys import write_new_key
from shared.auth import ensure_signing_key
from shared.secretfile import create_secret, replace_secret
from shared.settings import Settings


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def open_umask():
    old = os.umask(0)  # the loosest umask: the mode must still be 0600
    yield
    os.umask(old)


def test_a_secret_is_created_owner_only_and_never_over_an_existing_file(tmp_path, open_umask):
    path = tmp_path / "dir" / "secret"
    create_secret(path, b"s3cret")
    assert path.read_bytes() == b"s3cret" and mode(path) == 0o600
    with pytest.raises(FileExistsError):
        create_secret(path, b"other")
    assert path.read_bytes() == b"s3cret"


def test_a_planted_symlink_is_not_written_through(tmp_path, open_umask):
    target = tmp_path / "elsewhere"
    (tmp_path / "secret").symlink_to(target)
    with pytest.raises(FileExistsError):
        create_secret(tmp_path / "secret", b"s3cret")
    assert not target.exists()


def test_replacing_a_loose_file_leaves_an_owner_only_one(tmp_path, open_umask):
    path = tmp_path / "secrets.json"
    path.write_text("old")
    path.chmod(0o644)  # e.g. written by an older `endpoints export-secrets`
    replace_secret(path, b"new")
    assert path.read_bytes() == b"new" and mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secrets.json"]


def test_generated_signing_keys_are_owner_only(tmp_path, open_umask):
    s = Settings(token_private_key_file=tmp_path / "t.pem", token_public_key_file=tmp_path / "t.pub.pem")
    ensure_signing_key(s)
    assert mode(s.token_private_key_file) == 0o600
    write_new_key(tmp_path / "audit.key", "blonet-local/audit")
    assert mode(tmp_path / "audit.key") == 0o600
    with pytest.raises(FileExistsError):
        write_new_key(tmp_path / "audit.key", "blonet-local/audit")
