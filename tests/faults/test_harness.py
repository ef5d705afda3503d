"""The short version of `make faults`: on a private 3-broker cluster, under one steady load, stop all
of Kafka, kill -9 each service, the leader of a partition of alerts.submitted, and restart
PostgreSQL, one after another; every alert answered 202 must reach all its recipients under one
webhook-id each, and the audit log must hold each submission once and verify."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from shared.settings import REPO
from tests.conftest import port

pytestmark = [pytest.mark.stack, pytest.mark.faults]
# Kafka's stop comes first, on a healthy cluster: right after a leader kill it has been seen to leave
# partitions short of in-sync replicas for minutes (writes refused, nothing lost), too long for CI.
FAULTS = "kafka-stop,kill-gateway,kill-routing,kill-notifier,kill-audit,leader-kill,postgres-restart"


@pytest.mark.timeout(240)
def test_nothing_accepted_is_lost_when_each_part_dies_under_load():
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.faults", "--brokers", "3", "--one-window", "--scenarios", FAULTS,
         "--seconds", "75", "--rate", "4", "--restart-after", "2", "--drain-seconds", "60", "--base-port", str(port(200))],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=215)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the harness cleans its private stack up, and prints how far it got
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        pytest.fail(f"the harness did not finish in time:\n{out[-4000:]}")
    assert proc.returncode == 0, out[-4000:]
    row = next(line for line in out.splitlines() if line.strip().startswith(FAULTS.replace(",", "+")))
    assert " 0 " in row and "verified" in row and "FAIL" not in row, row
    assert out.count(" done at ") == len(FAULTS.split(",")), out[-3000:]
