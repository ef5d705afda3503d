"""Offline verification of the audit log or of one alert's trail: pure functions, no I/O.

Shared so that every checker (the audit CLI, the gateway console's trail page, an auditor's
script) runs the same code without importing the audit service.

`verify_log` recomputes the whole tree from the entries' bytes and checks it against every
signed checkpoint it is given (the latest, the log's earlier ones, and the auditor's own saved
one), so a changed, removed or reordered entry is found and placed between two checkpoints.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import orjson

from shared.checkpoint import Checkpoint, NoteError, VerifierKey, open_checkpoint
from shared.merkle import Frontier, leaf_hash, verify_inclusion

# The parts of the entry format (services/audit/entry.py) a verifier recomputes.
ERASURE = "audit.erasure"  # the type of the entry that records payloads removed from the payload store


def payload_digest(nonce: bytes, body: bytes) -> str:
    """The salted digest an entry keeps of its payload."""
    return hashlib.sha256(nonce + body).hexdigest()


class VerificationError(Exception):
    """The log, a checkpoint or a proof does not verify; the message says exactly what and where."""


@dataclass
class Verified:
    checkpoint: Checkpoint
    checkpoints_checked: int = 0
    saved: Checkpoint | None = None


def b64(h: bytes) -> str:
    return base64.b64encode(h).decode()


def open_signed(note: str, key: VerifierKey, what: str) -> Checkpoint:
    try:
        return open_checkpoint(note, key)
    except NoteError as exc:
        raise VerificationError(f"{what}: {exc}") from None


def verify_log(entries: Iterable[bytes], latest_note: str, key: VerifierKey, *, history: Sequence[str] = (),
               saved_note: str | None = None) -> Verified:
    """Recompute the tree of `entries` and check it against the latest, earlier and saved checkpoints."""
    latest = open_signed(latest_note, key, "latest checkpoint")
    result = Verified(latest)
    targets: dict[int, list[tuple[bytes, str]]] = {}

    def expect(cp: Checkpoint, label: str) -> None:
        targets.setdefault(cp.size, []).append((cp.root, label))

    for note in history:
        cp = open_signed(note, key, "a checkpoint in the log's history")
        if cp.size <= latest.size:
            expect(cp, f"the log's checkpoint of {cp.size} entries")
            result.checkpoints_checked += 1
    expect(latest, f"the latest checkpoint ({latest.size} entries)")
    if saved_note is not None:
        saved = result.saved = open_signed(saved_note, key, "your saved checkpoint")
        if saved.size > latest.size:
            raise VerificationError(f"the log shrank: your saved checkpoint has {saved.size} entries, the latest "
                                    f"only {latest.size}")
        expect(saved, f"your saved checkpoint ({saved.size} entries)")

    frontier, last_good = Frontier(), 0
    check(frontier, targets, result)  # a checkpoint of size 0 is checked against the empty tree
    for position, data in enumerate(entries):
        if position >= latest.size:
            break  # entries logged after the checkpoint are not covered by it
        claimed = _index_of(data, position)
        if claimed != position:
            raise VerificationError(f"entry at position {position} carries index {claimed}: an entry was removed, "
                                    "added or moved there")
        frontier.append(leaf_hash(data))
        if frontier.size in targets:
            last_good = check(frontier, targets, result, last_good)
    if frontier.size < latest.size:
        raise VerificationError(f"the log has {frontier.size} entries but the checkpoint covers {latest.size}: "
                                "entries were removed from its end")
    return result


def check(frontier: Frontier, targets: dict, result: Verified, last_good: int = 0) -> int:
    """Compare the recomputed root at this size with each checkpoint of this size; return the size checked."""
    root = frontier.root()
    for expected, label in targets.get(frontier.size, ()):
        if root != expected:
            raise VerificationError(
                f"the first {frontier.size} entries hash to {b64(root)} but {label} says {b64(expected)}: an entry "
                f"between index {last_good} and {frontier.size - 1} was changed, removed or reordered"
                + (f" (the first {last_good} still match a signed checkpoint)" if last_good else ""))
    return frontier.size


def _index_of(data: bytes, position: int) -> int | None:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise VerificationError(f"entry at position {position} is not JSON: it was changed") from None
    index = doc.get("index") if isinstance(doc, dict) else None
    return index if isinstance(index, int) else None


def included(item: dict, proof: dict, checkpoint: Checkpoint) -> dict:
    """Check that a served entry's bytes are in the signed tree by its inclusion proof; return the entry."""
    try:
        data = base64.b64decode(item["entry"], validate=True)
        hashes = [base64.b64decode(h, validate=True) for h in proof["hashes"]]
    except (KeyError, binascii.Error) as exc:
        raise VerificationError(f"entry {item.get('index')}: malformed response ({exc})") from None
    index = item["index"]
    doc = orjson.loads(data)
    if doc.get("index") != index:
        raise VerificationError(f"entry {index}: its bytes say index {doc.get('index')}")
    if proof["index"] != index or proof["tree_size"] != checkpoint.size:
        raise VerificationError(f"entry {index}: the proof is for index {proof['index']} in a tree of {proof['tree_size']}")
    if not verify_inclusion(index, checkpoint.size, leaf_hash(data), hashes, checkpoint.root):
        raise VerificationError(f"entry {index}: its inclusion proof does not lead to the signed root "
                                f"{b64(checkpoint.root)}: the entry or the tree was changed")
    return doc


def erased_by(erasures: Iterable[tuple[dict, dict]], checkpoint: Checkpoint) -> dict[int, int]:
    """Return, for each index whose payload a signed `audit.erasure` entry records erasing, that entry's index.

    `erasures` are (served entry, inclusion proof) pairs; each must prove its inclusion and be an erasure."""
    found: dict[int, int] = {}
    for item, proof in erasures:
        doc = included(item, proof, checkpoint)
        if doc.get("type") != ERASURE:
            raise VerificationError(f"entry {item['index']}: served as an erasure, but it is a {doc.get('type')}")
        for first, last in doc["erased"]["indexes"]:
            found.update(dict.fromkeys(range(first, last + 1), item["index"]))
    return found


def verify_trail_entry(item: dict, proof: dict, checkpoint: Checkpoint, erased: Mapping[int, int]) -> list[str]:
    """Check one trail entry against its inclusion proof and the signed root; return remarks, raise on failure.

    A payload may be missing only where `erased` (see erased_by) names the erasure entry that records it:
    otherwise it was removed behind the erase path's back."""
    doc, index = included(item, proof, checkpoint), item["index"]
    remarks = []
    payload = item.get("payload")
    if payload:
        digest = payload_digest(base64.b64decode(payload["nonce"]), base64.b64decode(payload["body"]))
        if digest != doc["payload"]["sha256"]:
            raise VerificationError(f"entry {index}: the payload served does not match the digest in the entry")
        remarks.append("payload matches its digest")
    elif "payload" in doc:
        if index not in erased:
            raise VerificationError(f"entry {index}: its payload is gone, but no audit.erasure entry in the signed "
                                    "log records erasing it")
        remarks.append(f"payload erased, recorded by entry {erased[index]} (the entry and its proof remain)")
    return remarks
