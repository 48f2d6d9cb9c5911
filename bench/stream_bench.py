"""Live progress under load: the progress stream against verify-session polling, same run.

- delay from a step's change (its activity's audit row) to a stream receiving it: one
  watcher, then one stream per enrollment for `watchers` enrollments at once;
- API + worker + Temporal CPU per watching student per minute, `watchers` running
  enrollments sitting in their tool step: polled once a second, then watched by streams;
- API RSS with `streams` open.

Run alone with `python -m bench.stream_bench [--quick]`; results in bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import httpx
import sqlalchemy as sa

from bench.enrollment_bench import (
    RESULTS,
    VERIFY,
    WEBHOOK,
    BenchStack,
    Report,
    pct,
    print_table,
)
from devstack.processes import free_port, memory_kib
from sandbox.app import create_app as create_sandbox
from sandbox.server import BackgroundServer

STREAM = "/api/payments/progress-stream/"


@dataclass
class StreamOptions:
    watchers: int = 200
    streams: int = 1000
    window_s: float = 30.0
    tool_ms: int = 3000


class StreamStack(BenchStack):
    """The bench stack with the offline Stripe sandbox: the fulfilment gate reads each
    Session from Stripe, so purchases go through checkout and the sandbox's payment."""

    def __init__(self, work: Path, seed: int) -> None:
        super().__init__(work, seed)
        self.sandbox = BackgroundServer(port=free_port())

    async def start(self) -> None:
        self.sandbox.app = create_sandbox(
            webhook_url=f"{self.api_url}{WEBHOOK}",
            webhook_secret=self.secret,
            public_url=self.sandbox.url,
        )
        self.sandbox.start()
        await super().start()

    async def close(self) -> None:
        await super().close()
        self.sandbox.stop()

    def app_env(self, **extra: object) -> dict[str, str]:
        # Every simulated student connects from 127.0.0.1: no per-address cap here.
        return super().app_env(
            **{
                "progress_streams_per_client": 100_000,
                "progress_streams_max": 100_000,
                "stripe_api_base": self.sandbox.url,
                **extra,
            }
        )


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes and their reaped children, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(v) for v in fields[11:15])
    return total / tick


async def deliver(stack: StreamStack, http: httpx.AsyncClient, tag: str, n: int) -> list[str]:
    """`n` purchases: checkout through the API, paid in the sandbox (its webhook fulfils)."""
    sids = []
    async with httpx.AsyncClient(
        base_url=stack.sandbox.url, headers={"Authorization": "Bearer sk_test_sandbox"}
    ) as sb:
        for i in range(n):
            r = await http.post(
                "/api/payments/create-anonymous-checkout/",
                json={"email": f"{tag}-{stack.run_id}-{i}@example.com", "name": "Bench",
                      "track": "DP"},
            )  # fmt: skip
            assert r.status_code == 200, r.text
            sid = r.json()["sessionId"]
            paid = await sb.post(f"/_sandbox/checkout/sessions/{sid}/pay", json={})
            assert paid.status_code == 200, paid.text
            sids.append(sid)
    return sids


async def watch(
    http: httpx.AsyncClient, sid: str, until: float, got: list[tuple[float, dict]] | None = None
) -> int:
    """One stream until it ends (or `until`); (receive time, event) into `got`."""
    events = 0
    try:
        async with http.stream("GET", STREAM, params={"session_id": sid}) as r:
            assert r.status_code == 200, r.status_code
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events += 1
                    if got is not None:
                        got.append((time.time(), json.loads(line[6:])))
                if time.monotonic() > until:
                    break
    except httpx.HTTPError:
        pass
    return events


def tool_done_at(stack: BenchStack, sids: list[str]) -> dict[tuple[str, str], float]:
    assert stack.engine is not None
    with stack.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT e.checkout_session_id, a.details, a.created_at FROM audit_event a "
                "JOIN enrollment e ON e.id = a.enrollment_id "
                "WHERE a.action = 'tool_provisioned' AND e.checkout_session_id = ANY(:s)"
            ),
            {"s": sids},
        ).all()
    out = {}
    for sid, data, created in rows:
        tool = (data if isinstance(data, dict) else json.loads(data))["tool"]
        out[(sid, f"tool:{tool}")] = created.timestamp() if isinstance(created, datetime) else 0
    return out


def delays(stack: BenchStack, got: dict[str, list[tuple[float, dict]]]) -> list[float]:
    """For each tool step, first receive of it done minus the time its activity recorded it."""
    changed = tool_done_at(stack, list(got))
    out = []
    for sid, events in got.items():
        seen: set[str] = set()
        for received, data in events:
            for step in data["progress"]["steps"]:
                key = step["key"]
                if step["status"] == "done" and key not in seen and (sid, key) in changed:
                    seen.add(key)
                    out.append(received - changed[(sid, key)])
    return out


async def run(opt: StreamOptions) -> Report:
    report = Report()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    stack = StreamStack(Path(os.environ.get("TMPDIR", "/tmp")) / f"onramp-stream-{stamp}", 7)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    try:
        await stack.start()
        assert stack.api is not None
        await stack.start_worker(tool_dev_latency_ms=opt.tool_ms)
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=120, limits=limits) as http:
            # 1. one watcher
            (sid,) = await deliver(stack, http, "one", 1)
            one: dict[str, list[tuple[float, dict]]] = {sid: []}
            await watch(http, sid, time.monotonic() + 120, one[sid])
            single = delays(stack, one)
            # 2. one stream per enrollment, `watchers` at once
            sids = await deliver(stack, http, "many", opt.watchers)
            many: dict[str, list[tuple[float, dict]]] = {s: [] for s in sids}
            until = time.monotonic() + 300
            await asyncio.gather(*(watch(http, s, until, many[s]) for s in sids))
            loaded = delays(stack, many)
        single_p50 = pct(single, 50) * 1000
        single_p99 = pct(single, 99) * 1000
        loaded_p99 = pct(loaded, 99) * 1000
        report.add(
            "stream.delay.single", "step change -> stream, 1 watcher", single_p99, "ms p99",
            "floor", None, f"p50 {single_p50:.0f} ms, {len(single)} tool steps",
        )  # fmt: skip
        report.add(
            "stream.delay.p99", f"step change -> stream, {opt.watchers} watchers", loaded_p99,
            "ms p99", f"<= 3x 1-watcher p99 ({3 * single_p99:.0f} ms)",
            loaded_p99 <= 3 * single_p99,
            f"p50 {pct(loaded, 50) * 1000:.0f} ms, {len(loaded)} tool steps",
        )  # fmt: skip

        # 3. running enrollments in their tool step: polling vs streams, CPU per watcher
        await stack.start_worker(tool_dev_latency_ms=600_000)
        assert stack.worker is not None
        pids = [stack.api.pid, stack.worker.pid, stack.temporal.pid]
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=120, limits=limits) as http:
            running = await deliver(stack, http, "run", opt.watchers)
            await asyncio.sleep(3.0)

            async def poller(sid: str, until: float) -> None:
                while time.monotonic() < until:
                    r = await http.get(VERIFY, params={"session_id": sid})
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))

            c0 = cpu_seconds(pids)
            until = time.monotonic() + opt.window_s
            await asyncio.gather(*(poller(s, until) for s in running))
            poll_cpu = cpu_seconds(pids) - c0
            c0 = cpu_seconds(pids)
            until = time.monotonic() + opt.window_s
            await asyncio.gather(*(watch(http, s, until) for s in running))
            stream_cpu = cpu_seconds(pids) - c0
            per = 60 / opt.window_s / opt.watchers * 1000
            report.add(
                "stream.cpu", f"API+worker+Temporal CPU per watcher per minute, {opt.watchers} "
                "streams", stream_cpu * per, "ms", f"<= 1/5 of polling ({poll_cpu * per / 5:.1f})",
                stream_cpu <= poll_cpu / 5,
                f"polling {poll_cpu * per:.1f} ms; ratio {stream_cpu / max(poll_cpu, 1e-9):.3f}",
            )  # fmt: skip

            # 4. RSS with `streams` open (spread over the running enrollments)
            until = time.monotonic() + 20
            tasks = [
                asyncio.create_task(watch(http, running[i % len(running)], until))
                for i in range(opt.streams)
            ]
            await asyncio.sleep(15)
            rss = memory_kib(stack.api.pid).get("VmRSS", 0) / 1024 * 1.048576
            await asyncio.gather(*tasks)
        report.add(
            "stream.rss", f"API RSS with {opt.streams} open streams", rss, "MB", "< 200 MB",
            rss < 200,
        )  # fmt: skip
    finally:
        await stack.close()
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"stream-{stamp}.json"
        out.write_text(json.dumps({"figures": [asdict(f) for f in report.figures],
                                   "options": asdict(opt)}, indent=2, default=str))  # fmt: skip
    return report


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_bench")
    parser.add_argument("--quick", action="store_true", help="20 watchers, 100 streams, 10 s")
    args = parser.parse_args()
    opt = StreamOptions(watchers=20, streams=100, window_s=10.0) if args.quick else StreamOptions()
    report = asyncio.run(run(opt))
    print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
