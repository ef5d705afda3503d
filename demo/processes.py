"""The services of `blonet run` as supervised child processes: each instance is restarted with
backoff when it exits on its own, as systemd's `Restart=on-failure` would, so a kill -9 is a blip."""
from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
from collections.abc import Callable

BACKOFF_SECONDS = (1, 2, 4, 8, 16, 30)  # the wait before restart 1, 2, …; the last one repeats
STEADY_SECONDS = 60  # an instance up this long starts its backoff afresh
Say = Callable[[str], None]
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when `blonet run` dies, even by kill -9, so no service outlives it."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervised:
    """One instance of one service: its process, its output, its restarts."""

    def __init__(self, name: str, module: str, env: dict[str, str], say: Say) -> None:
        self.name, self.module, self.env, self.say = name, module, env, say
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stopping = asyncio.Event()

    async def _start(self) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=self.env, start_new_session=True, preexec_fn=_die_with_parent)

    async def _stream(self, proc: asyncio.subprocess.Process) -> None:
        async for line in proc.stdout:
            print(f"{self.name:>10} | {line.decode(errors='replace').rstrip()}", flush=True)

    async def run(self) -> None:
        """Keep the instance running until `stop()`: restart it after each exit, waiting longer each time."""
        failures = 0
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            self.proc = await self._start()
            started = loop.time()
            await self._stream(self.proc)
            code = await self.proc.wait()
            if self._stopping.is_set():
                return
            failures = 1 if loop.time() - started >= STEADY_SECONDS else failures + 1
            wait = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS)) - 1]
            self.restarts += 1
            self.say(f"{self.name} exited with code {code}; restarting it in {wait} s (restart {self.restarts})")
            try:
                await asyncio.wait_for(self._stopping.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def stop(self, timeout: float = 20) -> None:
        """SIGTERM, then SIGKILL after `timeout`; no restart afterwards."""
        self._stopping.set()
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


def instance_env(service: str, port: int, instance: int, instances: int, step: int) -> tuple[str, dict[str, str]]:
    """The name and environment of instance `instance` (from 1) of `service`: its own port, `step` apart."""
    name = service if instances == 1 else f"{service}-{instance}"
    env = {**os.environ, f"BLONET_{service.upper()}_PORT": str(port + step * (instance - 1))}
    return name, env
