"""C2SP signed notes and tlog checkpoints with Ed25519 keys: pure functions, no I/O.

Formats (c2sp.org/signed-note, c2sp.org/tlog-checkpoint), byte-compatible with Go's
golang.org/x/mod/sumdb/note:
- verifier key  `<name>+<key id, 8 hex>+<base64(0x01 || 32-byte public key)>`
- signer key    `PRIVATE+KEY+<name>+<key id>+<base64(0x01 || 32-byte seed)>`
- key id        the first 4 bytes of SHA-256(name || 0x0A || 0x01 || public key)
- signed note   text (ending in a newline), a blank line, then lines
                `— <name> <base64(key id || Ed25519 signature of the text)>`
- checkpoint    the text `<origin>\n<tree size>\n<base64 root hash>\n` (then optional extension lines)
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALG_ED25519 = 1
SIG_PREFIX = "\u2014 "  # an em dash and a space open every signature line
MAX_SIGNATURES = 100  # as Go's note.Open: a note with more is refused unread


class NoteError(ValueError):
    """A key, note or checkpoint is malformed, or its signature does not verify."""


def _utf8(text: str) -> bool:
    try:
        text.encode()
        return True
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 note can hold it
        return False


def _valid_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(c.isspace() for c in name) and _utf8(name)


def key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()[:4]


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"not base64: {text[:40]!r}") from None


@dataclass(frozen=True)
class VerifierKey:
    name: str
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_key)

    @classmethod
    def parse(cls, vkey: str) -> VerifierKey:
        parts = vkey.strip().split("+", 2)  # base64 may hold "+" too
        if len(parts) != 3 or not _valid_name(parts[0]) or not re.fullmatch(r"[0-9a-f]{8}", parts[1]):
            raise NoteError("a verifier key reads <name>+<8 hex digits>+<base64 key>")
        name, hex_id, key = parts[0], parts[1], _b64decode(parts[2])
        if len(key) != 33 or key[0] != ALG_ED25519:
            raise NoteError("only Ed25519 verifier keys (algorithm 1, 32 bytes) are supported")
        parsed = cls(name, key[1:])
        if parsed.key_id.hex() != hex_id:
            raise NoteError(f"key id {hex_id} does not match the key (expected {parsed.key_id.hex()})")
        return parsed

    def __str__(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode()}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
            return True
        except InvalidSignature:
            return False


@dataclass(frozen=True)
class SignerKey:
    name: str
    seed: bytes  # the 32-byte Ed25519 private key

    @classmethod
    def generate(cls, name: str) -> SignerKey:
        if not _valid_name(name):
            raise NoteError(f"a key name must be non-empty, without spaces or '+': {name!r}")
        return cls(name, Ed25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def parse(cls, skey: str) -> SignerKey:
        parts = skey.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"] or not _valid_name(parts[2]) \
                or not re.fullmatch(r"[0-9a-f]{8}", parts[3]):
            raise NoteError("a signer key reads PRIVATE+KEY+<name>+<8 hex digits>+<base64 key>")
        key = _b64decode(parts[4])
        if len(key) != 33 or key[0] != ALG_ED25519:
            raise NoteError("only Ed25519 signer keys (algorithm 1, 32 bytes) are supported")
        parsed = cls(parts[2], key[1:])
        if parsed.verifier.key_id.hex() != parts[3]:
            raise NoteError("the signer key's id does not match its key")
        return parsed

    @property
    def verifier(self) -> VerifierKey:
        return VerifierKey(self.name, Ed25519PrivateKey.from_private_bytes(self.seed).public_key().public_bytes_raw())

    def __str__(self) -> str:
        encoded = base64.b64encode(bytes([ALG_ED25519]) + self.seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_id.hex()}+{encoded}"

    def sign(self, message: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.seed).sign(message)


def _check_text(text: str) -> None:
    if not text.endswith("\n") or any(ord(c) < 0x20 and c != "\n" for c in text) or not _utf8(text):
        raise NoteError("note text must be UTF-8, end with a newline and hold no control characters")


def sign_note(text: str, key: SignerKey) -> str:
    """Return the signed note: the text, a blank line and the key's signature line."""
    _check_text(text)
    signature = key.verifier.key_id + key.sign(text.encode())
    return f"{text}\n{SIG_PREFIX}{key.name} {base64.b64encode(signature).decode()}\n"


def open_note(note: str, key: VerifierKey) -> str:
    """Return the note's text if `key` signed it; raise NoteError otherwise."""
    _check_text(note)
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("malformed note: no blank line before the signatures")
    text, lines = note[: split + 1], note[split + 2:].splitlines()
    if not lines or len(lines) > MAX_SIGNATURES:
        raise NoteError(f"malformed note: {len(lines)} signature lines")
    for line in lines:
        if not line.startswith(SIG_PREFIX):
            raise NoteError(f"malformed signature line: {line[:60]!r}")
        name, _, b64 = line[len(SIG_PREFIX):].partition(" ")
        signature = _b64decode(b64)
        if not _valid_name(name) or len(signature) < 5:
            raise NoteError(f"malformed signature line: {line[:60]!r}")
        if name == key.name and signature[:4] == key.key_id:
            if not key.verify(text.encode(), signature[4:]):
                raise NoteError(f"invalid signature for key {key.name}+{key.key_id.hex()}")
            return text
    raise NoteError(f"the note is not signed by {key.name}+{key.key_id.hex()}")


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        return "".join(f"{line}\n" for line in (self.origin, str(self.size), base64.b64encode(self.root).decode(),
                                                  *self.extensions))

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "" or not lines[0]:
            raise NoteError("a checkpoint is an origin line, a size line, a root hash line, then extensions")
        if not re.fullmatch(r"0|[1-9][0-9]{0,18}", lines[1]):
            raise NoteError(f"checkpoint tree size is not a decimal number: {lines[1][:30]!r}")
        root = _b64decode(lines[2])
        if len(root) != 32:
            raise NoteError("checkpoint root hash is not 32 bytes")
        return cls(lines[0], int(lines[1]), root, tuple(lines[3:-1]))


def open_checkpoint(note: str, key: VerifierKey, origin: str | None = None) -> Checkpoint:
    """Verify a signed checkpoint and return it; its origin must be `origin` (default: the key's name)."""
    checkpoint = Checkpoint.parse(open_note(note, key))
    if checkpoint.origin != (origin or key.name):
        raise NoteError(f"checkpoint is for origin {checkpoint.origin!r}, expected {origin or key.name!r}")
    return checkpoint


def peek_checkpoint(note: str) -> Checkpoint:
    """Parse a signed checkpoint WITHOUT checking its signature (to archive it, not to trust it)."""
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("malformed note: no blank line before the signatures")
    return Checkpoint.parse(note[: split + 1])
