"""`blonet`: the one command line for operators and developers."""
from __future__ import annotations

import asyncio
import getpass
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from services import ops_cli
from services.audit.cli import audit as audit_cli
from services.gateway import repository as gateway_repo
from services.notifier import repository as notifier_repo
from services.notifier import service as notifier_service
from services.routing.cli import rules as routing_rules
from shared import db, topics
from shared.auth import Role, hash_api_key, new_api_key
from shared.secretfile import replace_secret
from shared.settings import get_settings

app = typer.Typer(help="BLOnet: route law-enforcement alerts between agencies and across borders.", no_args_is_help=True)
keys = typer.Typer(help="API keys: issued and revoked here, in one place.", no_args_is_help=True)
endpoints = typer.Typer(help="Webhook endpoint secrets, owned by the notifier.", no_args_is_help=True)
app.add_typer(keys, name="keys")
app.add_typer(endpoints, name="endpoints")
app.add_typer(routing_rules, name="rules")
app.add_typer(audit_cli, name="audit")
ops_cli.install(app)  # tail, status, deliveries failed, replay: over HTTP with an operator key
console = Console()


async def _with_session(service: str, work):
    settings = get_settings()
    await db.migrate(settings, service)
    return await db.in_session(settings, service, work)


@app.command()
def setup() -> None:
    """Create the database roles and schemas, run every migration, create the Kafka topics."""
    async def main() -> list[str]:
        settings = get_settings()
        await db.bootstrap(settings)
        for service in db.SERVICES:
            await db.migrate(settings, service)
        return await topics.create_topics(settings)

    created = asyncio.run(main())
    console.print(f"database ready; topics created: {', '.join(created) or 'none (all existed)'}")


@keys.command("create")
def keys_create(
    agency: str = typer.Option(..., help="agency id from the network directory"),
    role: list[Role] = typer.Option(..., help="submit, receive, operator or auditor (repeatable)"),
    label: str = typer.Option("", help="who or what uses the key"),
    post: list[str] = typer.Option([], help="limit submitting to this post of the agency (repeatable)"),
) -> None:
    """Issue a key; it is printed once and only its hash is stored."""
    key_id, key = new_api_key()
    asyncio.run(_with_session("gateway", lambda s: gateway_repo.add_key(
        s, key_id=key_id, agency=agency, roles=role, key_hash=hash_api_key(key), label=label, posts=post)))
    console.print(f"key {key_id} for {agency} ({', '.join(role)}){' at ' + ', '.join(post) if post else ''}:")
    print(key)


@keys.command("list")
def keys_list() -> None:
    """List keys (ids, agencies, roles, posts, state) — never the secrets."""
    rows = asyncio.run(_with_session("gateway", gateway_repo.list_keys))
    table = Table("key id", "agency", "roles", "posts", "label", "created", "revoked")
    for r in rows:
        revoked = f"{r['revoked_at']:%Y-%m-%d %H:%M}" if r["revoked_at"] else ""
        if r.get("replaced_by"):
            revoked += f" (rotated to {r['replaced_by']})"
        table.add_row(r["key_id"], r["agency"], ",".join(r["roles"]), ",".join(r.get("posts") or []) or "any", r["label"],
                      f"{r['created_at']:%Y-%m-%d %H:%M}", revoked)
    console.print(table)


@keys.command("rotate")
def keys_rotate(key_id: str) -> None:
    """Issue a new key with the same agency, roles and posts, and revoke the old one at once."""
    from services.gateway.service import rotate_key

    found = asyncio.run(_with_session("gateway", lambda s: rotate_key(s, key_id)))
    if found is None:
        console.print(f"no active key {key_id}")
        raise typer.Exit(1)
    console.print(f"key {key_id} revoked; its replacement is {found[0]}:")
    print(found[1])


@keys.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key at once (the gateway checks every request against the table)."""
    if not asyncio.run(_with_session("gateway", lambda s: gateway_repo.revoke_key(s, key_id))):
        console.print(f"no active key {key_id}")
        raise typer.Exit(1)
    console.print(f"key {key_id} revoked")


@endpoints.command("sync")
def endpoints_sync() -> None:
    """Give every endpoint of the network directory a signing secret if it has none."""
    from services.routing.network import load_network

    directory = load_network(get_settings().network_dir).directory
    ids = {e.id for e in directory.endpoints}
    asyncio.run(_with_session("notifier", lambda s: notifier_repo.ensure_endpoints(s, ids)))
    console.print(f"{len(ids)} endpoints have signing secrets")


@endpoints.command("rotate")
def endpoints_rotate(endpoint: str) -> None:
    """Replace an endpoint's signing secret and print the new one; the old one also signs during the overlap."""
    settings = get_settings()
    print(asyncio.run(_with_session("notifier", lambda s: notifier_service.rotate_secret(
        s, settings, endpoint, actor=_cli_actor()))))
    console.print(f"both secrets sign for {settings.secret_overlap_seconds:.0f} s", style="dim")


def _cli_actor() -> str:
    return f"cli:{getpass.getuser()}"


def _switch(endpoint: str, enabled: bool, reason: str | None) -> None:
    settings = get_settings()
    found = asyncio.run(_with_session("notifier", lambda s: notifier_service.set_enabled(
        s, settings, endpoint, enabled, actor=_cli_actor(), reason=reason)))
    if not found:
        console.print(f"no endpoint {endpoint}")
        raise typer.Exit(1)
    console.print(f"endpoint {endpoint} {'enabled' if enabled else 'disabled'}")


@endpoints.command("enable")
def endpoints_enable(endpoint: str, reason: str = typer.Option(None)) -> None:
    """Enable an endpoint: its waiting deliveries go out again (audited)."""
    _switch(endpoint, True, reason)


@endpoints.command("disable")
def endpoints_disable(endpoint: str, reason: str = typer.Option(None)) -> None:
    """Disable an endpoint: its deliveries wait until it is enabled (audited)."""
    _switch(endpoint, False, reason)


@endpoints.command("limit")
def endpoints_limit(endpoint: str, per_second: float = typer.Option(None, help="omit for the notifier's default")) -> None:
    """Set an endpoint's rate limit (deliveries per second per notifier instance)."""
    if not asyncio.run(_with_session("notifier", lambda s: notifier_repo.set_endpoint_rate(s, endpoint, per_second))):
        console.print(f"no endpoint {endpoint}")
        raise typer.Exit(1)


@endpoints.command("list")
def endpoints_list() -> None:
    """List endpoints and their state — never the secrets."""
    rows = asyncio.run(_with_session("notifier", notifier_repo.list_endpoints))
    table = Table("endpoint", "enabled", "why disabled", "rate/s", "rotation overlap until")
    for r in rows:
        table.add_row(r["endpoint"], "yes" if r["enabled"] else "no", r["disabled_reason"] or "",
                      f"{r['rate_per_second']:g}" if r["rate_per_second"] else "default",
                      f"{r['previous_until']:%Y-%m-%d %H:%M}" if r["previous_until"] else "")
    console.print(table)


@endpoints.command("export-secrets")
def endpoints_export(out: Path = typer.Option(..., help="file to write (mode 0600)")) -> None:
    """Write every endpoint's secret as JSON, for the local demo inboxes."""
    found = asyncio.run(_with_session("notifier", notifier_repo.secrets_by_endpoint))
    replace_secret(out, json.dumps(found, indent=2).encode())  # a new 0600 file, even over an older looser one
    console.print(f"{len(found)} secrets written to {out}")


@app.command()
def run(
    instances: int = typer.Option(1, min=1, max=9, help="instances of each service, in the same consumer groups"),
    port_step: int = typer.Option(1000, help="instance i of a service listens on its port + step × (i-1)"),
) -> None:
    """Run the four services, the demo inboxes and the demo scenario; Ctrl-C stops everything.

    A service instance that exits is restarted with backoff (1 s, 2 s, … 30 s) and the log says so.
    """
    from demo.supervisor import main

    raise typer.Exit(asyncio.run(main(instances, port_step)))
