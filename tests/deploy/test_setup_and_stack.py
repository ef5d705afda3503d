"""The README's commands on a fresh machine: the setup script names what it cannot install, and the
stack's PostgreSQL runs wherever the checkout lives (a 0700 home folder, any `mktemp -d` folder)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from shared.settings import REPO

ROOT = os.geteuid() == 0


def as_unprivileged(args: list[str]) -> list[str]:
    """Run as 'nobody' when we are root, so the non-root path of a script is the one exercised."""
    return ["runuser", "-u", "nobody", "--", *args] if ROOT else args


@pytest.fixture
def bare_path():
    """A PATH holding only the few tools the script itself uses: every checked program is "missing"."""
    bin_dir = Path(tempfile.mkdtemp())
    try:
        bin_dir.chmod(0o755)  # reachable by 'nobody'
        for tool in ("id", "sed", "head", "cut"):
            (bin_dir / tool).symlink_to(shutil.which(tool))
        # A copy of the script: the checkout itself may be out of that user's reach (a 0700 folder).
        shutil.copy(REPO / "deploy/setup.sh", bin_dir / "setup.sh")
        yield str(bin_dir)
    finally:
        shutil.rmtree(bin_dir)


def test_setup_as_a_user_names_each_missing_package_and_the_command_then_fails(bare_path):
    result = subprocess.run(as_unprivileged(["/usr/bin/env", f"PATH={bare_path}", "/bin/bash", f"{bare_path}/setup.sh", "test"]),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    named = {line.split()[2].rstrip(",") for line in lines}
    assert {"python3-venv", "openjdk-17-jre-headless", "maven", "chromium", "prometheus", "docker-compose"} <= named, lines
    for line in lines:
        package = line.split()[2].rstrip(",")
        assert line.startswith(f"setup: missing {package}, for ") and line.endswith(f"run 'sudo apt-get install {package}'"), line
    assert "installing" not in result.stdout


def test_setup_with_everything_present_changes_nothing_and_is_quick():
    # `make test` ran it before pytest, so a second call finds everything and installs nothing.
    started = time.monotonic()
    result = subprocess.run(["bash", str(REPO / "deploy/setup.sh"), "test"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result
    assert time.monotonic() - started < 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not ROOT, reason="the defect needs root: only then does the server run as user 'postgres', "
                                     "which a private folder keeps out")
def test_postgres_starts_from_a_private_folder_keeps_its_data_and_clean_deletes_it():
    home = Path(tempfile.mkdtemp())  # mode 0700, like root's home folder: 'postgres' cannot enter it
    try:
        assert home.stat().st_mode & 0o777 == 0o700
        shutil.copytree(REPO / "deploy", home / "deploy")
        env = {**os.environ, "BLONET_PG_PORT": str(free_port())}
        env.pop("BLONET_STACK_DIR", None)
        started = time.monotonic()

        def stack(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([str(home / "deploy/stack.sh"), *args], env=env, capture_output=True, text=True, timeout=60)

        up = stack("start", "postgres")
        try:
            assert up.returncode == 0, up.stdout + up.stderr
            assert "user postgres cannot reach" in up.stdout and "/var/lib/blonet/pg-" in up.stdout, up.stdout
            where = Path(up.stdout.split("data in ")[1].split()[0])
            assert stack("status", "postgres").returncode == 0
            down = stack("stop", "postgres")
            assert down.returncode == 0 and "postgres: stopped" in down.stdout, down.stdout + down.stderr
            assert (where / "data" / "PG_VERSION").exists(), "stop keeps the data, as for any cluster"
            again = stack("start", "postgres")
            assert again.returncode == 0 and str(where) in again.stdout, again.stdout + again.stderr
        finally:
            gone = stack("clean")
        assert gone.returncode == 0 and "postgres: stopped" in gone.stdout, gone.stdout + gone.stderr
        assert not where.exists(), "clean (make stop) deletes a cluster kept outside the checkout"
        assert time.monotonic() - started < 20
        assert home.stat().st_mode & 0o777 == 0o700, "the user's own folder is never opened up"
    finally:
        shutil.rmtree(home, ignore_errors=True)
