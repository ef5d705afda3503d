"""`python -m bench.soak` (`make soak`): BLOnet under a modest steady load for a long while, on a
private stack, watching for slow growth: the memory (RSS; PostgreSQL's tree as PSS), open files and
CPU of every process, the Kafka lag and the database size, sampled every --sample-seconds. At the end
the same counts as `make faults` (nothing accepted lost, one webhook-id per delivery, lag 0, the
audit log verified) and, per process, its memory after the first sample (warm-up) against the last.

By default it runs as the faults issue asks: 30 minutes, with a fault every 3 minutes (each service
killed in turn, PostgreSQL restarted, Kafka stopped); `--scenarios none` runs without faults.
The rate defaults to 5 alerts/s; give half the sustained rate `bench.pipeline` measured (--rate).
Ctrl-C (or SIGTERM) once stops the load early and still drains and counts; twice abandons the run.
Every sample (with the size of every BLOnet table and its indexes) is written as CSV to soak.csv in
the run's log folder, and plotted, one panel per measure, to soak.png beside it.
"""
from __future__ import annotations

import asyncio
import csv
import itertools
import re
import subprocess
import sys
import time
from pathlib import Path

import uvloop
from sqlalchemy import text

from bench import faults
from bench.system import CpuMeter, LagProbe, _tree

DEFAULT_FAULTS = "kill-notifier,kill-routing,kill-audit,kill-gateway,postgres-restart,kafka-stop"
SCHEMAS = ("gateway", "routing", "notifier", "audit")
GROWTH_FLAG = (0.25, 32)  # a process whose memory grew by more than 25 % and 32 MiB after warm-up is flagged


def parse_args(argv: list[str] | None = None):
    p = faults.parser("python -m bench.soak", __doc__)
    p.add_argument("--minutes", type=float, default=30, help="how long the load runs")
    p.add_argument("--sample-seconds", type=float, default=60, help="how often each process is measured")
    p.add_argument("--fault-every", type=float, default=180, help="seconds between faults, when --scenarios names some")
    p.set_defaults(scenarios=DEFAULT_FAULTS, rate=5, base_port=26000)
    args = p.parse_args(argv)
    if args.scenarios == "none":
        args.scenarios = ""
    args.seconds = args.minutes * 60
    return args


def memory_kib(pid: int, proportional: bool = False) -> int:
    """VmRSS of a process, or its Pss (shared pages split among their users: a fair sum over a tree)."""
    path, key = (f"/proc/{pid}/smaps_rollup", "Pss:") if proportional else (f"/proc/{pid}/status", "VmRSS:")
    with open(path) as f:
        return next((int(line.split()[1]) for line in f if line.startswith(key)), 0)  # none: a zombie, or exiting


def open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


class Sampler:
    def __init__(self, harness: faults.Harness, every: float) -> None:
        self.h, self.every = harness, every
        self.samples: list[dict] = []

    def pids(self) -> dict[str, int]:
        found = {name: proc.pid for name, proc in self.h.procs.items() if proc.alive()}
        folder = Path(self.h.stack_env["BLONET_STACK_DIR"])
        for node in range(1, self.h.args.brokers + 1):
            try:
                found[f"kafka-{node}"] = int((folder / ("kafka" if node == 1 else f"kafka-{node}") / "kafka.pid").read_text())
            except (OSError, ValueError):
                pass
        status = subprocess.run([faults.STACK_SH, "status", "postgres"], env=self.h.stack_env, capture_output=True, text=True)
        if pid := re.search(r"\(pid (\d+)\)", status.stdout):
            found["postgres"] = int(pid[1])
        return found

    async def run(self) -> None:
        lag = LagProbe(self.h.settings, self.h.settings.topic_prefix)
        await lag.start()
        started = time.monotonic()
        try:
            while True:
                pids = await asyncio.to_thread(self.pids)
                meter = CpuMeter(pids)
                meter.start()
                await asyncio.sleep(self.every)
                cpu = meter.stop()
                sample = {"t_s": round(time.monotonic() - started), "lag": await _quietly(lag.lag(), lambda lags: sum(lags.values())),
                          "db_mib": await _quietly(self.h.in_session("notifier", _database_size), lambda b: round(b / 2**20, 1))}
                sizes = await _quietly(self.h.in_session("notifier", _table_sizes), dict) or {}
                sample |= {f"table.{name}.mib": round(size / 2**20, 2) for name, size in sizes.items()}
                for name, pid in pids.items():
                    try:
                        tree = _tree(pid) if name == "postgres" else [pid]
                        sample[f"{name}.rss_mib"] = round(sum(memory_kib(p, name == "postgres") for p in tree) / 1024, 1)
                        sample[f"{name}.fds"] = sum(open_files(p) for p in tree)
                        sample[f"{name}.cpu_pct"] = cpu.get(name)
                    except OSError:
                        pass  # it died meanwhile (a fault): the next sample sees its successor
                self.samples.append(sample)
                print(f"   soak {sample['t_s']:5d} s: lag {sample['lag']}, database {sample['db_mib']} MiB, "
                      + ", ".join(f"{n} {sample.get(f'{n}.rss_mib', '-')} MiB" for n in sorted(pids)), flush=True)
        finally:
            await lag.close()

    def report(self, path: Path) -> list[str]:
        """Write the samples as CSV; print growth per process; return the flagged processes."""
        if not self.samples:
            print("soak: no sample taken")
            return []
        keys = sorted({k for s in self.samples for k in s} - {"t_s"}, key=lambda k: (k.split(".")[0], k))
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, ["t_s", *keys])
            w.writeheader()
            w.writerows(self.samples)
        first, last = self.samples[0], self.samples[-1]
        print(f"\n== Soak: per process, first sample ({first['t_s']} s, after warm-up) against the last ({last['t_s']} s)")
        print(f"   {'process':12} {'RSS MiB':>15} {'growth':>14} {'open files':>12} {'CPU % avg':>9}")
        flagged = []
        for name in sorted({k.split(".")[0] for k in keys if k.endswith(".rss_mib")}):
            a, b = first.get(f"{name}.rss_mib"), last.get(f"{name}.rss_mib")
            cpu = [s[f"{name}.cpu_pct"] for s in self.samples if s.get(f"{name}.cpu_pct") is not None]
            if a is None or b is None:
                print(f"   {name:12} {'(restarted)':>15}")
                continue
            grew = b - a
            flag = grew > GROWTH_FLAG[1] and grew > GROWTH_FLAG[0] * a
            flagged += [name] if flag else []
            rss, growth = f"{a:.0f} -> {b:.0f}", f"{grew:+.0f} ({100 * grew / a:+.0f} %)"
            fds = f"{first.get(name + '.fds')} -> {last.get(name + '.fds')}"
            print(f"   {name:12} {rss:>15} {growth:>14} {fds:>12} {sum(cpu) / max(1, len(cpu)):9.1f}{'   <- GROWS' if flag else ''}")
        print(f"   lag at the samples: {[s['lag'] for s in self.samples]}; database {first['db_mib']} -> {last['db_mib']} MiB")
        tables = sorted(k for k in keys if k.startswith("table."))
        grown = sorted(tables, key=lambda k: (last.get(k) or 0) - (first.get(k) or 0), reverse=True)[:5]
        print("   tables (with indexes) that grew most, MiB: "
              + ", ".join(f"{k[6:-4]} {first.get(k)} -> {last.get(k)}" for k in grown))
        print(f"   samples: {path}")
        plot(self.samples, path.with_suffix(".png"))
        print(f"   plot: {path.with_suffix('.png')}")
        return flagged


def plot(samples: list[dict], path: Path) -> None:
    """One panel per measure over time: memory and CPU per process, Kafka lag, table sizes."""
    import matplotlib
    matplotlib.use("Agg")  # no display: write the file only
    from matplotlib import pyplot

    t = [s["t_s"] / 60 for s in samples]
    keys = {k for s in samples for k in s}
    panels = [("memory, MiB (RSS; PostgreSQL: PSS of its tree)", sorted(k for k in keys if k.endswith(".rss_mib"))),
              ("CPU, % of one core", sorted(k for k in keys if k.endswith(".cpu_pct"))),
              ("open files", sorted(k for k in keys if k.endswith(".fds"))),
              ("Kafka lag, records", ["lag"]),
              ("tables with their indexes, MiB", sorted(k for k in keys if k.startswith("table.")))]
    figure, axes = pyplot.subplots(len(panels), 1, figsize=(11, 3.2 * len(panels)), sharex=True)
    for ax, (title, series) in zip(axes, panels):
        for key in series:
            ax.plot(t, [s.get(key) if s.get(key) is not None else float("nan") for s in samples], label=key.split(".")[0]
                    if not key.startswith("table.") else key[6:-4])
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if 1 < len(series) <= 16:
            ax.legend(fontsize=7, ncol=4, loc="upper left")
    axes[-1].set_xlabel("minutes since the first sample")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    pyplot.close(figure)


async def _database_size(session) -> int:
    return (await session.execute(text("SELECT pg_database_size(current_database())"))).scalar_one()


async def _table_sizes(session) -> list[tuple[str, int]]:
    """Every BLOnet table's size with its indexes and TOAST (catalogue data: any role may read it)."""
    found = await session.execute(text(
        "SELECT n.nspname || '.' || c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(:schemas)"),
        {"schemas": list(SCHEMAS)})
    return [(name, size) for name, size in found]


async def _quietly(awaitable, then):
    """A sample's value, or None if Kafka or the database is away just now (a fault)."""
    try:
        return then(await awaitable)
    except Exception:  # noqa: BLE001 - a sample must never end the soak
        return None


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n for n in args.scenarios.split(",") if n]
    sampler: Sampler | None = None

    async def body(harness: faults.Harness) -> None:
        nonlocal sampler
        sampler = Sampler(harness, args.sample_seconds)
        count = max(0, int(args.seconds // args.fault_every) - 1) if names else 0  # none in the last interval
        plan = list(itertools.islice(itertools.cycle(names), count))
        print(f"soak: {args.rate:g} alerts/s for {args.minutes:g} min, sampled every {args.sample_seconds:g} s; "
              f"faults: {', '.join(plan) or 'none'}", flush=True)
        await harness.scenario(plan, first_at=args.fault_every, gap=args.fault_every, during=sampler.run, label="soak")

    code, harness = await faults.run(args, body, graceful=True)
    if sampler is not None:
        sampler.report(harness.tmp / "soak.csv")
    return code


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))
