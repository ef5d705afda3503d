"""`blonet`'s operations commands start without loading the database and Kafka code."""
from __future__ import annotations

import subprocess
import sys

from shared.settings import REPO

PROBE = """
import sys
from services.entry import main
sys.argv = ["blonet", *{args!r}]
try:
    main()
except SystemExit:
    pass
print("HEAVY:", sorted(m for m in ("sqlalchemy", "aiokafka", "asyncpg") if m in sys.modules))
"""


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE.format(args=list(args))], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_operations_commands_load_only_what_they_need():
    for command in ("tail", "status", "replay", "deliveries"):
        out = run(command, "--help")
        assert "Usage: blonet" in out and "HEAVY: []" in out, out


def test_the_other_commands_are_all_there():
    out = run("--help")
    for command in ("keys", "rules", "audit", "setup", "run", "tail", "status", "replay", "deliveries"):
        assert command in out, out
