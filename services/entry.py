"""The `blonet` command. The operations commands only talk HTTP, so they load just what they need
and answer in a fraction of a second; every other command loads the whole CLI (database, Kafka)."""
from __future__ import annotations

import sys

import typer

FAST = {"tail", "status", "replay", "deliveries"}  # services/ops_cli.py


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in FAST:
        from services import ops_cli

        app = typer.Typer(no_args_is_help=True)
        ops_cli.install(app)
    else:
        from services.cli import app
    app()
