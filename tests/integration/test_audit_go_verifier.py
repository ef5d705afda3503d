"""An independent verifier (Go: golang.org/x/mod/sumdb/tlog and sumdb/note) checks what the audit service serves.

It shares no code with BLOnet: Go's crypto/ed25519 checks the checkpoint signatures, tlog rebuilds
the tree from the exported entries and checks the inclusion and consistency proofs the API gave.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from services.audit import keys
from shared import topics
from shared.checkpoint import open_checkpoint
from shared.settings import REPO
from tests.integration.test_audit_service import alone, auditor, produce_raw, run_cli  # noqa: F401 (fixtures)
from tests.unit.test_audit_entry import submitted_record

pytestmark = pytest.mark.stack
SOURCE = REPO / "tests" / "verifier"


def go() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    assert found, "Go is needed for the independent verifier (.ci/run installs golang-go when it is missing)"
    return found


@pytest.fixture(scope="session")
async def verifier(tmp_path_factory) -> Path:
    """Build the Go verifier for real (modules from the Go proxy, checked against the committed go.sum)."""
    binary = tmp_path_factory.mktemp("go") / "audit-verifier"
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    proc = await asyncio.create_subprocess_exec(go(), "build", "-o", str(binary), ".", cwd=SOURCE, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, f"go build failed:\n{out.decode()}"
    return binary


async def run_go(binary: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(str(binary), *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode, out.decode()


async def test_go_verifies_the_export_checkpoints_and_proofs(alone, auditor, verifier, tmp_path):  # noqa: F811
    vkey = keys.load_signing_key(alone).verifier
    await produce_raw(alone, topics.ALERTS_SUBMITTED.name, *(submitted_record() for _ in range(5)))
    await auditor.wait_for("/v1/search", lambda b: len(b["entries"]) >= 5, type="alert.submitted")
    old = open_checkpoint(await auditor.sign(), vkey)
    cp = open_checkpoint(await auditor.sign(), vkey)
    export = tmp_path / "log.jsonl"
    code, out = await run_cli("export", "--out", str(export), "--url", auditor.base, "--token",
                              auditor.headers["Authorization"].split()[1])
    assert code == 0, out
    size = json.loads(export.read_text().split("\n", 1)[0])["tree_size"]
    assert size >= cp.size
    indexes = sorted({0, 1, old.size - 1, cp.size // 2, cp.size - 1})
    proofs = {"inclusion": [await auditor.get("/v1/proofs/inclusion", index=i, tree_size=cp.size) for i in indexes],
              "consistency": [await auditor.get("/v1/proofs/consistency", first=f, second=cp.size)
                              for f in sorted({1, old.size, cp.size // 3 or 1, cp.size})]}
    (tmp_path / "proofs.json").write_text(json.dumps(proofs))
    code, out = await run_go(verifier, "-vkey", str(vkey), "-export", str(export), "-proofs", str(tmp_path / "proofs.json"))
    assert code == 0, out
    result = json.loads(out)
    assert result["tree_size"] == size and result["origin"] == vkey.name
    assert result["inclusion_proofs"] == len(proofs["inclusion"]) and result["consistency_proofs"] == len(proofs["consistency"])

    # The same tools refuse a changed entry, a forged signature and a wrong key.
    lines = export.read_bytes().split(b"\n")
    first_entry = 1 + json.loads(lines[0])["checkpoints"]
    changed = lines[:first_entry + 2] + [lines[first_entry + 2].replace(b'"format":1', b'"format":2')] + lines[first_entry + 3:]
    (tmp_path / "changed.jsonl").write_bytes(b"\n".join(changed))
    code, out = await run_go(verifier, "-vkey", str(vkey), "-export", str(tmp_path / "changed.jsonl"))
    assert code == 1 and "the signed checkpoint says" in out, out
    forged = json.loads(lines[first_entry - 1])
    lines[first_entry - 1] = json.dumps(forged.replace(f"\n{size}\n", f"\n{size + 1}\n")).encode()
    (tmp_path / "forged.jsonl").write_bytes(b"\n".join(lines))
    code, out = await run_go(verifier, "-vkey", str(vkey), "-export", str(tmp_path / "forged.jsonl"))
    assert code == 1 and "invalid signature" in out, out
    code, out = await run_go(verifier, "-vkey", "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
                             "-export", str(export))
    assert code == 1 and "no verifiable signatures" in out, out
