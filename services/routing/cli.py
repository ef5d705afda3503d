"""`blonet rules`: test, apply and show network versions from the command line."""
from __future__ import annotations

import asyncio
import getpass
import json
from datetime import datetime, timezone
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from services.routing import repository
from services.routing.compiled import Compiled
from services.routing.network import Network, NetworkConfigError, load_network
from services.routing.policy import Thread, decide
from services.routing.state import ActiveNetwork
from shared import db
from shared.alerts import Alert
from shared.kafka import make_producer
from shared.service import Runtime
from shared.settings import Settings, get_settings

rules = typer.Typer(help="Network directory and route rules: test, apply, show.", no_args_is_help=True)
console = Console(highlight=False)


def _load_or_exit(path: Path) -> Network:
    try:
        return load_network(path)
    except NetworkConfigError as exc:
        console.print(f"[red]{path} is refused, {len(exc.problems)} problem(s):")
        for problem in exc.problems:
            console.print(f"  - {problem}")
        raise typer.Exit(1) from None


@rules.command("test")
def rules_test(
    network: Path = typer.Argument(..., help="a network folder (directory.yaml + rules.yaml) or a bundle file"),
    alert: Path = typer.Argument(..., help="an alert as JSON"),
    at: datetime = typer.Option(None, help="decide as of this time (default: now)"),
) -> None:
    """Show what a network version would decide for an alert, and why, without sending anything."""
    net = Compiled(_load_or_exit(network))
    decision = decide(Alert.model_validate(json.loads(alert.read_text())), Thread(), net,
                      (at or datetime.now(timezone.utc)).astimezone(timezone.utc))
    table = Table("recipient", "outcome", "rule", "why", title=f"{net.hash}")
    for r in decision.recipients:
        table.add_row(r.unit or r.agency, f"{r.profile.value} view" + (f", without {', '.join(r.redacted)}" if r.redacted else ""),
                      r.rule, r.reason)
    for d in decision.denied:
        table.add_row(d.unit or d.agency, f"[red]denied: {d.code}", "", d.explanation)
    console.print(table)
    if decision.note:
        console.print(decision.note)


@rules.command("apply")
def rules_apply(network: Path = typer.Argument(..., help="a network folder or a bundle file")) -> None:
    """Validate a network version and make it the active one for every routing instance (audited)."""
    candidate = _load_or_exit(network)
    changed = asyncio.run(apply_network(get_settings(), candidate, by=f"cli:{getpass.getuser()}", source="cli"))
    console.print(f"{candidate.hash} {'activated' if changed else 'was already active'}")


async def apply_network(settings: Settings, network: Network, *, by: str, source: str) -> bool:
    """Activate a network version from outside the routing service; running instances follow it."""
    await db.migrate(settings, "routing")
    rt = Runtime("routing", settings.routing_port, settings)
    rt.producer = make_producer(settings)
    await rt.producer.start()
    try:
        return await ActiveNetwork(rt).apply(network, by=by, source=source)
    finally:
        await rt.producer.stop()
        await rt.engine.dispose()


@rules.command("show")
def rules_show() -> None:
    """Show the active version and the activation history."""
    async def main() -> list[dict]:
        settings = get_settings()
        engine = db.make_engine(settings, "routing", pool_size=1)
        try:
            async with db.make_sessionmaker(engine)() as session:
                return await repository.history(session)
        finally:
            await engine.dispose()

    table = Table("activated", "version", "by", "source")
    for row in asyncio.run(main()):
        table.add_row(f"{row['activated_at']:%Y-%m-%d %H:%M:%S}", row["hash"], row["by"], row["source"] or "")
    console.print(table)
