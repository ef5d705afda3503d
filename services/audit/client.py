"""Reading a log for verification: over the auditors' HTTP API, or from an exported file.

An export is JSON lines: a header object, then `checkpoints` lines each holding one signed
checkpoint as a JSON string (oldest first, the last one covering the whole export), then one
line per entry holding the entry's exact bytes (canonical JSON never contains a raw newline).
"""
from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

EXPORT_FORMAT = "blonet-audit-export"
PAGE = 10_000


class SourceError(Exception):
    """The log could not be read (HTTP error, unreachable service, malformed export)."""


class AuditClient:
    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    def get(self, path: str, **params) -> bytes:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        request = urllib.request.Request(f"{self.url}{path}{'?' + query if query else ''}",
                                         headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise SourceError(f"GET {path}: {exc.code} {exc.read().decode(errors='replace')[:300]}") from None
        except OSError as exc:
            raise SourceError(f"GET {path}: {exc}") from None

    def json(self, path: str, **params) -> dict:
        return json.loads(self.get(path, **params))

    def checkpoint(self) -> str:
        return self.get("/v1/checkpoint").decode()

    def history(self) -> list[str]:
        notes, after = [], -1
        while True:
            page = self.json("/v1/checkpoints", after=after)["checkpoints"]
            notes += [c["note"] for c in page]
            if len(page) < 1000:
                return notes
            after = page[-1]["tree_size"]

    def entries(self, size: int) -> Iterator[bytes]:
        for start in range(0, size, PAGE):
            # Served in log order; whether each sits at its place is for the verifier to judge.
            for item in self.json("/v1/entries", start=start, end=min(start + PAGE, size))["entries"]:
                yield base64.b64decode(item["entry"])


def export_head(origin: str, notes: list[str], size: int) -> bytes:
    """Return an export's first lines: the header and the signed checkpoints."""
    header = {"format": EXPORT_FORMAT, "version": 1, "origin": origin, "tree_size": size, "checkpoints": len(notes)}
    return b"".join(json.dumps(x).encode() + b"\n" for x in (header, *notes))


def write_export(out: Path, origin: str, notes: list[str], size: int, entries: Iterator[bytes]) -> int:
    """Write an export of `size` entries; return how many were written."""
    count = 0
    with out.open("wb") as f:
        f.write(export_head(origin, notes, size))
        for data in entries:
            f.write(data + b"\n")
            count += 1
    return count


def read_export(path: Path) -> tuple[dict, list[str], Iterator[bytes]]:
    """Return an export's header, its signed checkpoints (oldest first) and an iterator of its entries."""
    f = path.open("rb")
    try:
        header = json.loads(f.readline())
        if header.get("format") != EXPORT_FORMAT:
            raise SourceError(f"{path} is not a BLOnet audit export")
        notes = [json.loads(f.readline()) for _ in range(header["checkpoints"])]
    except (ValueError, KeyError, TypeError) as exc:
        f.close()
        raise SourceError(f"{path}: malformed export header ({exc})") from None
    if not notes:
        f.close()
        raise SourceError(f"{path} holds no signed checkpoint")

    def lines() -> Iterator[bytes]:
        with f:
            for line in f:
                yield line.rstrip(b"\n")

    return header, notes, lines()
