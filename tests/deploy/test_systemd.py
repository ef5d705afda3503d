"""The systemd units under deploy/systemd: `systemd-analyze verify` finds nothing to say about them."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from shared.settings import REPO

UNITS = REPO / "deploy" / "systemd"


def verify(folder: Path, *units: str) -> str:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze checks deploy/systemd (package systemd; deploy/setup.sh test installs it)"
    result = subprocess.run([tool, "verify", "--man=no", *(f"./{u}" for u in units)], cwd=folder,
                            capture_output=True, text=True, timeout=60)
    return (result.stdout + result.stderr).strip() + ("" if result.returncode == 0 else f"\n(exit {result.returncode})")


def installed_copy(tmp_path: Path) -> Path:
    """The units as installed, but pointing at this checkout, whose interpreter exists (verify checks)."""
    for unit in UNITS.iterdir():
        text = unit.read_text().replace("/opt/blonet", str(REPO))
        (tmp_path / unit.name).write_text(text)
    return tmp_path


def test_every_unit_verifies_cleanly(tmp_path):
    folder = installed_copy(tmp_path)
    services = sorted(p.name for p in UNITS.glob("blonet-*@.service"))
    assert [s.split("@")[0] for s in services] == ["blonet-audit", "blonet-gateway", "blonet-notifier", "blonet-routing"]
    assert verify(folder, *(s.replace("@", "@1") for s in services), "blonet.target") == ""
    for name in services:
        text = (UNITS / name).read_text()
        assert "Restart=on-failure" in text and f"-m services.{name.split('-')[1].split('@')[0]}" in text


def test_verify_would_report_a_broken_unit(tmp_path):
    folder = installed_copy(tmp_path)
    unit = folder / "blonet-routing@.service"
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restart=on-failure\nRestartEverySoOften=1"))
    assert "RestartEverySoOften" in verify(folder, "blonet-routing@1.service")
