"""The short version of `make faults`: on a private 3-broker cluster, under one steady load, kill -9
each service, the leader of a partition of alerts.submitted, all of Kafka, and PostgreSQL, one
after another; every alert answered 202 must reach all its recipients under one webhook-id each,
and the audit log must hold each submission once and verify."""
from __future__ import annotations

import subprocess
import sys

import pytest

from shared.settings import REPO
from tests.conftest import port

pytestmark = [pytest.mark.stack, pytest.mark.faults]
FAULTS = "kill-gateway,kill-routing,kill-notifier,kill-audit,leader-kill,kafka-stop,postgres-restart"


@pytest.mark.timeout(240)
def test_nothing_accepted_is_lost_when_each_part_dies_under_load(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bench.faults", "--brokers", "3", "--one-window", "--scenarios", FAULTS,
         "--seconds", "75", "--rate", "4", "--restart-after", "2", "--drain-seconds", "60", "--base-port", str(port(200))],
        cwd=REPO, capture_output=True, text=True, timeout=230)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    row = next(line for line in out.splitlines() if line.strip().startswith(FAULTS.replace(",", "+")))
    assert " 0 " in row and "verified" in row and "FAIL" not in row, row
    assert out.count(" done at ") == len(FAULTS.split(",")), out[-3000:]
