"""`blonet audit`: signing keys, offline verification, export and payload erasure."""
from __future__ import annotations

import asyncio
import base64
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from uuid import UUID

import typer
from rich.console import Console

from services.audit import keys, service
from services.audit.client import AuditClient, SourceError, read_export, write_export
from shared import db
from shared.auditproof import VerificationError, erased_by, open_signed, verify_log, verify_trail_entry
from shared.checkpoint import NoteError, SignerKey, VerifierKey, peek_checkpoint
from shared.merkle import verify_consistency
from shared.settings import get_settings

audit = typer.Typer(help="The audit log: signing keys, verification, export, erasure.", no_args_is_help=True)
console = Console(stderr=True, highlight=False, soft_wrap=True)  # messages are read by scripts too: no wrapping

KEY_HELP = "the log's verifier key (as printed by `blonet audit keygen`), or @FILE holding it"
URL_OPT = typer.Option(None, help="audit service base URL (default: this node's)")
TOKEN_OPT = typer.Option(None, envvar="BLONET_AUDIT_TOKEN", help="auditor bearer token from the gateway")


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]FAILED[/]: {message}")
    return typer.Exit(code)


def _verifier(text: str) -> VerifierKey:
    try:
        return VerifierKey.parse(Path(text[1:]).read_text() if text.startswith("@") else text)
    except (NoteError, OSError) as exc:
        raise _fail(f"verifier key: {exc}", 2) from None


def _client(url: str | None, token: str | None) -> AuditClient:
    if not token:
        raise _fail("an auditor token is needed (--token or BLONET_AUDIT_TOKEN)", 2)
    return AuditClient(url or f"http://127.0.0.1:{get_settings().audit_port}", token)


@audit.command()
def keygen(name: str = typer.Option(None, help="the log's origin (default: BLONET_AUDIT_ORIGIN or <node id>/audit)"),
           out: Path = typer.Option(None, help="where to write the signing key (default: the configured key file)")) -> None:
    """Create the log's Ed25519 checkpoint signing key and print its verifier key (C2SP vkey)."""
    settings = get_settings()
    out = out or keys.key_file(settings)
    try:
        key = keys.write_new_key(out, name or keys.origin(settings))
    except FileExistsError:
        raise _fail(f"{out} exists: a signing key is never replaced silently", 2) from None
    except NoteError as exc:
        raise _fail(str(exc), 2) from None
    console.print(f"signing key written to {out} (mode 0600, keep it secret); publish the verifier key:")
    print(key.verifier)


@audit.command()
def vkey(key_file: Path = typer.Option(None, help="signing key file (default: the configured one)")) -> None:
    """Print the verifier key (C2SP vkey) of the log's signing key."""
    path = key_file or keys.key_file(get_settings())
    try:
        print(SignerKey.parse(path.read_text()).verifier)
    except (OSError, NoteError) as exc:
        raise _fail(f"{path}: {exc}", 2) from None


@audit.command()
def verify(key: str = typer.Option(..., help=KEY_HELP),
           file: Path = typer.Option(None, help="verify an export instead of the live service"),
           url: str = URL_OPT, token: str = TOKEN_OPT,
           saved: Path = typer.Option(None, help="a checkpoint you saved earlier: the log must extend it"),
           save: Path = typer.Option(None, help="after success, save the verified checkpoint here"),
           alert: UUID = typer.Option(None, help="verify only this alert's trail, by inclusion proofs")) -> None:
    """Verify the log: checkpoint signature, the whole tree recomputed, consistency with a saved checkpoint.

    Exits 0 if everything verifies, 1 on any mismatch (with what and where), 2 if the log could not be read.
    """
    vk = _verifier(key)
    saved_note = saved.read_text() if saved else None
    started = time.perf_counter()
    try:
        if alert:
            latest = _verify_trail(_client(url, token), vk, alert, saved_note)
        else:
            if file:
                _, history, entries = read_export(file)
                latest = history[-1]
            else:
                client = _client(url, token)
                latest = client.checkpoint()
                history = client.history()
                size = open_signed(latest, vk, "latest checkpoint").size
                entries = client.entries(size)
            result = verify_log(entries, latest, vk, history=history, saved_note=saved_note)
            cp = result.checkpoint
            console.print(f"[green]OK[/]: {cp.size} entries recomputed in {time.perf_counter() - started:.1f} s; "
                          f"root {cp.root.hex()} signed by {vk.name}+{vk.key_id.hex()}; "
                          f"{result.checkpoints_checked} earlier checkpoints agree"
                          + (f"; extends your saved checkpoint of {result.saved.size}" if result.saved else ""))
    except VerificationError as exc:
        raise _fail(str(exc)) from None
    except SourceError as exc:
        raise _fail(str(exc), 2) from None
    if save:
        save.write_text(latest)
        console.print(f"checkpoint saved to {save}")


def _verify_trail(client: AuditClient, vk: VerifierKey, alert: UUID, saved_note: str | None) -> str:
    """Verify one alert's trail entry by entry against the signed checkpoint; return the checkpoint."""
    latest = client.checkpoint()
    cp = open_signed(latest, vk, "latest checkpoint")
    if saved_note:
        saved = open_signed(saved_note, vk, "your saved checkpoint")
        if saved.size > cp.size:
            raise VerificationError(f"the log shrank: your saved checkpoint has {saved.size} entries, the latest {cp.size}")
        if saved.size:
            proof = client.json("/v1/proofs/consistency", first=saved.size, second=cp.size)
            hashes = [base64.b64decode(h) for h in proof["hashes"]]
            if not verify_consistency(saved.size, cp.size, saved.root, cp.root, hashes):
                raise VerificationError(f"the log of {cp.size} entries does not extend your saved checkpoint of "
                                        f"{saved.size}: it was rewritten")
    trail = client.json(f"/v1/trail/{alert}")
    covered = [e for e in trail["entries"] if e["index"] < cp.size]

    def proof(item: dict) -> dict:
        return client.json("/v1/proofs/inclusion", index=item["index"], tree_size=cp.size)

    erased = erased_by(((e, proof(e)) for e in trail.get("erasures", []) if e["index"] < cp.size), cp)
    for item in covered:
        remarks = verify_trail_entry(item, proof(item), cp, erased)
        console.print(f"  #{item['index']:<8} {item['type']:<20} {item['event_id']}  included; {'; '.join(remarks)}")
    later = len(trail["entries"]) - len(covered)
    console.print(f"[green]OK[/]: {len(covered)} entries of alert {alert} are in the log of {cp.size} entries signed by "
                  f"{vk.name}+{vk.key_id.hex()}" + (f"; {later} newer entries await the next checkpoint" if later else ""))
    return latest


@audit.command()
def export(out: Path = typer.Option(..., help="the file to write"), url: str = URL_OPT, token: str = TOKEN_OPT) -> None:
    """Write the log's entries and every signed checkpoint to a file, for archiving and offline verification."""
    client = _client(url, token)
    try:
        latest = client.checkpoint()
        cp = peek_checkpoint(latest)
        history = [n for n in client.history() if n != latest and peek_checkpoint(n).size <= cp.size] + [latest]
        written = write_export(out, cp.origin, history, cp.size, client.entries(cp.size))
    except (SourceError, NoteError) as exc:
        raise _fail(str(exc), 2) from None
    console.print(f"{written} entries and {len(history)} signed checkpoints written to {out}")


@audit.command()
def erase(alert: UUID = typer.Option(None, help="erase the payloads of this alert's entries"),
          expired: bool = typer.Option(False, help="erase every payload past BLONET_PAYLOAD_RETENTION_DAYS"),
          reason: str = typer.Option(..., help="why (recorded in the log)"),
          by: str = typer.Option(os.environ.get("USER", "operator"), help="who (recorded in the log)")) -> None:
    """Erase payloads from the payload store; the entries, and every proof, stay valid."""
    if (alert is None) == (not expired):
        raise _fail("give --alert or --expired", 2)
    settings = get_settings()
    now = datetime.now(timezone.utc)
    cutoff = now - timedelta(days=settings.payload_retention_days) if expired else None

    async def main() -> list[int]:
        engine = db.make_engine(settings, "audit", pool_size=1)
        try:
            async with db.make_sessionmaker(engine)() as session:
                erased = await service.erase(session, reason=reason, actor=by, now=now, alert_id=alert, stored_before=cutoff)
                await session.commit()
                return erased
        finally:
            await engine.dispose()

    erased = asyncio.run(main())
    console.print(f"{len(erased)} payloads erased; the erasure is recorded in the log")
