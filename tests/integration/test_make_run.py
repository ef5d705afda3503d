"""Smoke test of `make run`: the demo comes up, shows the scenario, and Ctrl-C stops everything."""
from __future__ import annotations

import http.cookiejar
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from shared.settings import REPO
from tests.conftest import port
from tests.integration.conftest import network_dir
from tests.integration.test_console import CHROMIUM, FLAGS

pytestmark = pytest.mark.stack

# A third, private stack so the smoke test never touches the test stack or a developer's stack.
PORTS = {"kafka": port(120), "controller": port(121), "pg": port(122), "gateway": port(100), "routing": port(101),
         "notifier": port(102), "audit": port(103), "inbox": port(110)}
STACK_DIR = REPO / "var" / f"smoke-stack-{PORTS['kafka']}"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_make_run_shows_the_scenario_and_stops_cleanly(tmp_path):
    net = network_dir(tmp_path / "network", PORTS["inbox"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLONET_")}
    env.update({
        "BLONET_STACK_DIR": str(STACK_DIR), "BLONET_KAFKA_PORT": str(PORTS["kafka"]),
        "BLONET_KAFKA_CONTROLLER_PORT": str(PORTS["controller"]), "BLONET_PG_PORT": str(PORTS["pg"]),
        "BLONET_KAFKA_BOOTSTRAP": f"127.0.0.1:{PORTS['kafka']}", "BLONET_NETWORK_DIR": str(net),
        "BLONET_PUBLIC_BASE_URL": f"http://127.0.0.1:{PORTS['gateway']}", "BLONET_DEMO_INBOX_PORT": str(PORTS["inbox"]),
        **{f"BLONET_{s.upper()}_PORT": str(PORTS[s]) for s in ("gateway", "routing", "notifier", "audit")},
        # Audit signs its empty checkpoint at start and then only on demand: the console is seen as
        # someone opening it right after `make run` sees it, before the first non-empty checkpoint.
        "BLONET_CHECKPOINT_INTERVAL_SECONDS": "0",
    })
    log = tmp_path / "make-run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["make", "run"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while "DEMO SUMMARY" not in log.read_text(errors="replace"):
                assert proc.poll() is None, f"make run exited early:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"no demo summary:\n{log.read_text()[-3000:]}"
                time.sleep(0.5)
            text = log.read_text()
            assert "DEMO SUMMARY: OK — 7/7 recipients delivered, 1 denied with reasons" in text, text[-3000:]
            assert "not_on_route" in text and "Where to look" in text
            assert_console_shows_the_scenario(text)
            assert_trail_before_the_first_checkpoint(text)
            assert_a_killed_service_is_restarted(log, env)
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
            # make re-raises SIGINT once its recipe has finished: that is how a clean Ctrl-C ends.
            assert proc.wait(120) in (0, -signal.SIGINT), log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                # Killed, its clean-up never ran: stop the smoke stack here, or it outlives the test.
                subprocess.run([str(REPO / "deploy/stack.sh"), "clean"], env=env, capture_output=True, timeout=120)
    text = log.read_text()
    assert "all services stopped" in text and "kafka: stopped" in text and "postgres: stopped" in text
    subprocess.run([str(REPO / "deploy/stack.sh"), "clean"], env=env, capture_output=True, timeout=120)  # a database kept outside
    shutil.rmtree(STACK_DIR, ignore_errors=True)
    busy = [name for name, port in PORTS.items() if not port_free(port)]
    assert not busy, f"ports still taken after Ctrl-C: {busy}\n{text[-2000:]}"


def assert_console_shows_the_scenario(text: str) -> None:
    """The printed operator key signs in to the printed console URL, whose live flow lists the scenario."""
    url = re.search(r"operations console:\s+(\S+)", text).group(1)
    key = re.search(r"operator key:\s+(\S+)", text).group(1)
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    form = urllib.parse.urlencode({"api_key": key}).encode()
    with browser.open(urllib.request.Request(f"{url}/login", data=form), timeout=10) as page:  # follows the 303
        html = page.read().decode()
    assert page.url.rstrip("/").endswith("/console") and "not_on_route" in html and "s-delivered" in html, html[-3000:]


def assert_trail_before_the_first_checkpoint(text: str) -> None:
    """In a real browser, the alert page's trail lists its entries as not yet covered by a checkpoint, no raw error."""
    url = re.search(r"operations console:\s+(\S+)", text).group(1)
    key = re.search(r"operator key:\s+(\S+)", text).group(1)
    alert_id = re.search(r"alert ([0-9a-f-]{36}) routed", text).group(1)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(locale="en-GB")
            page.set_default_timeout(15_000)
            page.goto(f"{url}/login")
            page.fill("#api_key", key)
            page.click("button[type=submit]")
            page.goto(f"{url}/alerts/{alert_id}")
            trail = page.locator("#trail")
            expect(trail).to_contain_text("none signed yet")
            expect(trail.locator("tr.trail-pending").first).to_contain_text("after the latest checkpoint")
            html = trail.inner_html()
            assert "trail-failed" not in html and "422" not in html and "greater_than_equal" not in html, html
        finally:
            browser.close()


def assert_a_killed_service_is_restarted(log, env: dict) -> None:
    """kill -9 of a service is a blip: `blonet run` says so, restarts it, and it is ready again."""
    port = env["BLONET_ROUTING_PORT"]
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _is_service(p, "routing", port)]
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while "routing exited with code -9; restarting it in 1 s (restart 1)" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, "routing did not come back:\n" + log.read_text()[-3000:]
        time.sleep(0.3)


def _is_service(proc: Path, name: str, port: str) -> bool:
    try:
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        environ = (proc / "environ").read_bytes().split(b"\0")
    except OSError:  # gone meanwhile, or not ours to read
        return False
    return f"services.{name}".encode() in cmdline and f"BLONET_{name.upper()}_PORT={port}".encode() in environ
