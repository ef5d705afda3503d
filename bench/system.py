"""What the bench needs from the machine: the dev stack, child processes, CPU use, consumer lag."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from aiokafka import TopicPartition

from shared.kafka import make_admin, make_consumer
from shared.settings import REPO, Settings

STACK_KEYS = ("BLONET_STACK_DIR", "BLONET_CACHE_DIR", "BLONET_KAFKA_PORT", "BLONET_KAFKA_CONTROLLER_PORT", "BLONET_PG_PORT")
TEST_PORTS = {19092, 19093, 15433}  # the test suite's stack: never ours to touch


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Stack:
    """The dev stack as deploy/stack.sh sees it with this environment (defaults: 9092 / 5433)."""

    def __init__(self) -> None:
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("BLONET_")},
                    **{k: os.environ[k] for k in STACK_KEYS if k in os.environ}}
        self.kafka_port = int(self.env.get("BLONET_KAFKA_PORT", 9092))
        self.pg_port = int(self.env.get("BLONET_PG_PORT", 5433))
        ports = {self.kafka_port, self.pg_port, int(self.env.get("BLONET_KAFKA_CONTROLLER_PORT", 9093))}
        if ports & TEST_PORTS:
            sys.exit(f"bench: refusing ports {sorted(ports & TEST_PORTS)}: they belong to the test stack")
        self.dir = Path(self.env.get("BLONET_STACK_DIR", REPO / "var" / "stack"))
        self.started: list[str] = []  # components this run started, and so must stop

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(REPO / "deploy" / "stack.sh"), *args], env=self.env, capture_output=True,
                              text=True, timeout=900)

    def ensure(self) -> None:
        for comp in ("postgres", "kafka"):
            if self._run("status", comp).returncode == 0:
                continue
            result = self._run("start", comp)
            if result.returncode != 0:
                raise RuntimeError(f"deploy/stack.sh start {comp} failed:\n{result.stdout}{result.stderr}")
            print(f"bench: the dev stack's {comp} was not running; started it: {result.stdout.strip()}", flush=True)
            self.started.append(comp)

    def restore(self) -> None:
        for comp in reversed(self.started):
            result = self._run("stop", comp)
            print(f"bench: stopped the {comp} it started: {(result.stdout + result.stderr).strip()}", flush=True)

    def pids(self) -> dict[str, int]:
        found = {}
        for name, path in (("kafka", self.dir / "kafka" / "kafka.pid"), ("postgres", self.dir / "postgres" / "data" / "postmaster.pid")):
            try:
                found[name] = int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        return found


class Proc:
    """A child process in its own session (Ctrl-C goes to the bench, which stops it cleanly)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.log = name, log_dir / f"{name}.log"
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


async def wait_http(url: str, proc: Proc, timeout: float = 90, ready: Callable[[int], bool] = lambda status: status < 500) -> None:
    """Poll `url` until its status is `ready`; fail at once if `proc` exits, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
            try:
                async with http.get(url) as r:
                    if ready(r.status):
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.3)
    raise RuntimeError(f"{proc.name} not ready after {timeout:.0f} s:\n{proc.tail()}")


# ------------------------------------------------------------------ CPU

def _ticks(pid: int) -> int:
    """utime+stime of pid plus those of its reaped children (postgres backends come and go)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15])


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _machine() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), sum(v) - v[3] - v[4]  # total, busy (not idle, not iowait)


class CpuMeter:
    """CPU used per named process between start() and stop(), in % of one core.

    Only PostgreSQL is counted as a whole tree (its backends); the others are single processes
    (the bench's own process is the parent of every child, so a tree would count them twice).
    """

    def __init__(self, pids: dict[str, int], trees: tuple[str, ...] = ("postgres",)) -> None:
        self.pids, self.trees = pids, trees
        self.clk = os.sysconf("SC_CLK_TCK")
        self.cores = os.cpu_count() or 1

    def _snap(self) -> dict[str, int]:
        snap = {}
        for name, root in self.pids.items():
            total = 0
            for pid in _tree(root) if name in self.trees else [root]:
                try:
                    total += _ticks(pid)
                except (OSError, ValueError):
                    pass
            snap[name] = total
        return snap

    def start(self) -> None:
        self._t0, self._s0, self._m0 = time.monotonic(), self._snap(), _machine()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._t0
        s1, m1 = self._snap(), _machine()
        used = {n: round(100 * (s1[n] - self._s0[n]) / self.clk / wall, 1) for n in self.pids}
        total, busy = m1[0] - self._m0[0], m1[1] - self._m0[1]
        used["machine"] = round(100 * self.cores * busy / total, 1) if total else 0.0  # of cores*100
        used["other"] = round(max(0.0, used["machine"] - sum(v for k, v in used.items() if k != "machine")), 1)
        return used


# ------------------------------------------------------------------ Kafka lag

class LagProbe:
    """Kafka lag of every consumer group whose name starts with `prefix`: end minus committed offsets.

    Groups and their topics are found on the broker (the topics a group has committed on), so
    the probe follows the services' consumers as they change. A topic a group has never
    committed on is not counted: after the warm-up every topic in use has had its first commit.
    """

    def __init__(self, settings: Settings, prefix: str) -> None:
        self.settings, self.prefix = settings, prefix

    async def start(self) -> None:
        self.admin = make_admin(self.settings)
        self.consumer = make_consumer(self.settings, enable_auto_commit=False)
        await self.admin.start()
        await self.consumer.start()

    async def close(self) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def lag(self) -> dict[str, int]:
        out = {}
        groups = [g[0] for g in await self.admin.list_consumer_groups() if g[0].startswith(self.prefix)]
        for group in sorted(groups):
            committed = await self.admin.list_consumer_group_offsets(group)
            tps = []
            for topic in sorted({tp.topic for tp in committed}):
                parts = self.consumer.partitions_for_topic(topic)
                if parts is None:  # not in this client's metadata yet
                    await self.consumer.topics()
                    parts = self.consumer.partitions_for_topic(topic) or set()
                tps += [TopicPartition(topic, p) for p in sorted(parts)]
            end = await self.consumer.end_offsets(tps) if tps else {}
            out[group] = sum(end[tp] - max(committed[tp].offset if tp in committed else 0, 0) for tp in tps)
        return out
