"""Live progress under load: the progress stream against verify-session polling, same run.

- delay from a step's change (its activity's audit row, committed with the notification)
  to a stream receiving it, with `watchers` enrollments running at once: first one of
  them watched, then every one of them watched by its own stream. Holding the running
  enrollments the same in both isolates what the target is about, the number of
  watchers; one enrollment alone on the stack is printed too, for reference;
- API + worker + Temporal CPU per watching student per minute, `watchers` running
  enrollments sitting in their tool step: polled once a second, then watched by streams
  (opening them included);
- API RSS with `streams` open.

The simulated students are raw asyncio sockets (bench.loadgen for the polls, `Sse` below
for the streams): the load generator shares the two cores with the stack, and httpx's
per-connection cost was larger than the API's own. CPU is read from /proc for the stack's
processes only. Every student connects from 127.0.0.1, so the per-address cap is lifted
for the bench (PROGRESS_STREAMS_PER_CLIENT); the total cap stays above `streams`.

Run alone with `python -m bench.stream_bench [--quick]`; results in bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import sqlalchemy as sa

from bench.enrollment_bench import RESULTS, VERIFY, BenchStack, Report, pct, print_table
from bench.loadgen import HTTPError, Pool
from devstack.processes import memory_kib

STREAM = "/api/payments/progress-stream/"
CHECKOUT = "/api/payments/create-anonymous-checkout/"


@dataclass
class StreamOptions:
    watchers: int = 200
    streams: int = 1000
    window_s: float = 30.0
    tool_ms: int = 3000
    single_rounds: int = 2  # rounds with one of `watchers` running enrollments watched
    pay_concurrency: int = 8


class StreamStack(BenchStack):
    """The bench stack with the sandbox delivering its own webhooks: the fulfilment gate
    reads each Session from Stripe, so purchases go through checkout and the sandbox's pay."""

    def __init__(self, work: Path, seed: int) -> None:
        super().__init__(work, seed)
        self.sandbox_webhooks = True

    def app_env(self, **extra: object) -> dict[str, str]:
        return super().app_env(
            **{"progress_streams_per_client": 100_000, "progress_streams_max": 5_000, **extra}
        )


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (all threads) and their reaped children, seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(v) for v in fields[11:15])
    return total / tick


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Sse:
    """One student's stream on its own socket: each `data:` line with when it arrived
    (parsed afterwards, so the client does as little as it can while it listens)."""

    url: str
    sid: str
    status: int = 0
    lines: list[tuple[float, bytes]] = field(default_factory=list)
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, until: float) -> None:
        parts = urlsplit(self.url)
        assert parts.hostname and parts.port
        writer = None
        try:
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            writer.write(
                f"GET {STREAM}?session_id={self.sid} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                "Accept: text/event-stream\r\nConnection: close\r\n\r\n".encode()
            )
            status = await reader.readline()
            self.status = int(status.split(b" ", 2)[1]) if status else -1
            while (line := await reader.readline()) not in (b"\r\n", b""):
                pass
            self.opened.set()
            if self.status != 200:
                return
            loop = asyncio.get_running_loop()
            while (left := until - loop.time()) > 0:
                try:
                    line = await asyncio.wait_for(reader.readline(), left)
                except TimeoutError:
                    return
                if not line:
                    return  # the server ended the stream (ready or end)
                if line.startswith(b"data: "):
                    self.lines.append((time.time(), line[6:]))
        except HTTPError:
            self.status = self.status or -1
        finally:
            self.opened.set()
            if writer is not None:
                writer.close()

    def events(self) -> list[tuple[float, dict]]:
        return [(t, json.loads(raw)) for t, raw in self.lines]


async def checkouts(api: Pool, tag: str, run_id: str, n: int) -> list[str]:
    async def one(i: int) -> str:
        body = {"email": f"{tag}-{run_id}-{i}@example.com", "name": "Bench", "track": "DP"}
        r = await api.post(
            CHECKOUT, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        assert r.status_code == 200, r.text
        return str(r.json()["sessionId"])

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def pay(sandbox: Pool, sids: list[str]) -> None:
    """Paid in the sandbox, which then sends checkout.session.completed to the API."""

    async def one(sid: str) -> None:
        r = await sandbox.post(
            f"/_sandbox/checkout/sessions/{sid}/pay",
            b"{}",
            {"Content-Type": "application/json", "Authorization": "Bearer sk_test_sandbox"},
        )
        assert r.status_code == 200, r.text

    await asyncio.gather(*(one(s) for s in sids))


def tool_done_at(stack: BenchStack, sids: list[str]) -> dict[tuple[str, str], float]:
    """(session, "tool:<name>") -> when its provisioning activity recorded it (epoch s)."""
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
        if isinstance(created, datetime) and created.tzinfo is None:
            created = created.replace(tzinfo=UTC)  # stored as UTC
        out[(sid, f"tool:{tool}")] = created.timestamp()
    return out


def delays(stack: BenchStack, streams: list[Sse], late: list[dict] | None = None) -> list[float]:
    """For each tool step, its first receipt as done minus the time its activity recorded
    it; steps later than a second go into `late` with their stream's events (to look at)."""
    changed = tool_done_at(stack, [s.sid for s in streams])
    out = []
    for stream in streams:
        seen: set[str] = set()
        events = stream.events()
        for received, data in events:
            for step in data["progress"]["steps"]:
                key = (stream.sid, step["key"])
                if step["status"] == "done" and key not in seen and key in changed:
                    seen.add(key)
                    out.append(received - changed[key])
                    if late is not None and out[-1] > 1.0:
                        timeline = [(t, d["progress"]["steps"]) for t, d in events]
                        late.append({"sid": stream.sid, "step": step["key"], "delay_s": out[-1],
                                     "changed": changed[key], "events": timeline})  # fmt: skip
    return out


async def hub_reads(api: Pool) -> float:
    """The API's progress hub reads so far (Temporal reads made for the streams)."""
    r = await api.get("/metrics")
    for line in r.text.splitlines():
        if line.startswith("onramp_progress_reads_total "):
            return float(line.split()[1])
    return float("nan")


async def wait_status(
    stack: BenchStack, sids: list[str], status: str, within_s: float, still_s: float = 0.0
) -> int:
    """Until every one of these enrollments has `status`, or `within_s`, or (with
    `still_s`) the count has not grown for that long; how many have it."""
    assert stack.engine is not None
    deadline = time.monotonic() + within_s
    sql = sa.text(
        "SELECT count(*) FROM enrollment WHERE checkout_session_id = ANY(:s) AND status = :st"
    )
    last, since = -1, time.monotonic()
    while True:
        with stack.engine.connect() as conn:
            done = int(conn.execute(sql, {"s": sids, "st": status}).scalar_one())
        now = time.monotonic()
        if done != last:
            last, since = done, now
        if done == len(sids) or now > deadline or (done and still_s and now - since > still_s):
            return done
        await asyncio.sleep(0.5)


async def round_of(
    stack: StreamStack, api: Pool, sandbox: Pool, tag: str, n: int, watched: list[int]
) -> tuple[list[Sse], int]:
    """`n` enrollments bought and paid together, streams open on `watched` of them before
    they are paid; the streams once every enrollment is READY, and refusals."""
    sids = await checkouts(api, tag, stack.run_id, n)
    streams = [Sse(stack.api_url, sids[i]) for i in watched]
    until = asyncio.get_running_loop().time() + 240
    tasks = [asyncio.create_task(s.run(until)) for s in streams]
    await asyncio.gather(*(s.opened.wait() for s in streams))
    await asyncio.sleep(0.3)  # the first read of each
    await pay(sandbox, sids)
    await wait_status(stack, sids, "READY", 180.0)
    await asyncio.wait(tasks, timeout=30)
    for task in tasks:
        task.cancel()
    return streams, sum(1 for s in streams if s.status != 200)


async def run(opt: StreamOptions) -> Report:
    report = Report()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    stack = StreamStack(Path(os.environ.get("TMPDIR", "/tmp")) / f"onramp-stream-{stamp}", 7)
    raw: dict[str, object] = {"options": asdict(opt)}
    try:
        await stack.start()
        assert stack.api is not None
        await stack.start_worker(tool_dev_latency_ms=opt.tool_ms)
        n = opt.watchers
        async with (
            Pool(stack.api_url, size=opt.pay_concurrency) as api,
            Pool(stack.sandbox_url, size=opt.pay_concurrency) as sandbox,
        ):
            late: list[dict] = []
            # 0. one enrollment alone, one watcher (reference only)
            alone, _ = await round_of(stack, api, sandbox, "alone", 1, [0])
            idle = delays(stack, alone)
            # 1. `n` running, one watched (in the middle of the payments), `single_rounds` times
            single: list[float] = []
            for r in range(opt.single_rounds):
                streams, _ = await round_of(stack, api, sandbox, f"one{r}", n, [n // 2])
                single += delays(stack, streams, late)
            reads0 = await hub_reads(api)
            # 2. `n` running, every one watched
            streams, refused = await round_of(stack, api, sandbox, "many", n, list(range(n)))
            loaded = delays(stack, streams, late)
            raw["late"] = late
            reads = await hub_reads(api) - reads0
        raw["delays_s"] = {"alone": idle, "single": single, "loaded": loaded}
        single_p99, loaded_p99 = pct(single, 99) * 1000, pct(loaded, 99) * 1000
        report.add(
            "stream.delay.alone", "step change -> stream, 1 enrollment on the stack",
            pct(idle, 99) * 1000, "ms p99", "reference", None,
            f"p50 {pct(idle, 50) * 1000:.0f} ms, {len(idle)} tool steps",
        )  # fmt: skip
        report.add(
            "stream.delay.single", f"step change -> stream, 1 watcher, {n} running",
            single_p99, "ms p99", "floor", None,
            f"p50 {pct(single, 50) * 1000:.0f} ms, {len(single)} tool steps",
        )  # fmt: skip
        report.add(
            "stream.delay.p99", f"step change -> stream, {n} watchers, {n} running", loaded_p99,
            "ms p99", f"<= 3x 1-watcher p99 ({3 * single_p99:.0f} ms)",
            loaded_p99 <= 3 * single_p99 and not refused and len(loaded) >= 4 * n,
            f"p50 {pct(loaded, 50) * 1000:.0f} ms, {len(loaded)} tool steps, "
            f"{refused} refused; the hub read Temporal {reads:.0f} times",
        )  # fmt: skip

        # 3. running enrollments in their tool step: polling vs streams, CPU per watcher
        await stack.start_worker(tool_dev_latency_ms=600_000)
        assert stack.worker is not None
        pids = [stack.api.pid, stack.worker.pid, stack.temporal.pid]
        async with (
            Pool(stack.api_url, size=opt.pay_concurrency) as api,
            Pool(stack.sandbox_url, size=opt.pay_concurrency) as sandbox,
        ):
            running = await checkouts(api, "run", stack.run_id, n)
            await pay(sandbox, running)
        # Until they stop moving: those whose tools hold the worker's activity slots sit in
        # their tool step, the rest wait in Temporal's queue for a slot. Either way running,
        # and nothing changes during the windows: only the watching differs below.
        enrolled = await wait_status(stack, running, "ENROLLED", 60.0, still_s=3.0)
        await asyncio.sleep(3.0)
        loop = asyncio.get_running_loop()
        polls = Pool(stack.api_url, size=n)
        answered = 0

        async def poller(sid: str, until: float) -> None:
            nonlocal answered
            while loop.time() < until:
                try:
                    r = await polls.get(VERIFY, {"session_id": sid})
                    answered += r.status_code in (200, 202)
                    wait = float(r.headers.get("retry-after", "1"))
                except HTTPError:
                    wait = 1.0
                await asyncio.sleep(wait)

        c0, g0 = cpu_seconds(pids), own_cpu()
        until = loop.time() + opt.window_s
        await asyncio.gather(*(poller(s, until) for s in running))
        poll_cpu, poll_gen = cpu_seconds(pids) - c0, own_cpu() - g0
        await polls.close()
        await asyncio.sleep(2.0)

        c0, g0 = cpu_seconds(pids), own_cpu()
        until = loop.time() + opt.window_s
        watching = [Sse(stack.api_url, s) for s in running]
        await asyncio.gather(*(s.run(until) for s in watching))
        stream_cpu, stream_gen = cpu_seconds(pids) - c0, own_cpu() - g0
        # What the stack burns with nobody watching (Temporal's timers, the worker's
        # pollers and heartbeats): in both figures above, printed beside them.
        c0 = cpu_seconds(pids)
        await asyncio.sleep(opt.window_s / 3)
        idle_cpu = (cpu_seconds(pids) - c0) * 3
        refused = sum(1 for s in watching if s.status != 200)
        per = 60 / opt.window_s / n * 1000
        raw["cpu_s"] = {"poll": poll_cpu, "stream": stream_cpu, "idle": idle_cpu,
                        "polls_answered": answered,
                        "generator_poll": poll_gen, "generator_stream": stream_gen}  # fmt: skip
        report.add(
            "stream.cpu", f"API+worker+Temporal CPU per watcher per minute, {n} streams",
            stream_cpu * per, "ms", f"<= 1/5 of polling ({poll_cpu * per / 5:.1f})",
            stream_cpu <= poll_cpu / 5 and not refused,
            f"polling {poll_cpu * per:.1f} ms ({answered} polls answered); ratio "
            f"{stream_cpu / max(poll_cpu, 1e-9):.3f}; {refused} refused; idle stack "
            f"{idle_cpu * per:.1f} ms of each; {enrolled}/{n} in their tool step, the rest queued",
        )  # fmt: skip

        # 4. RSS with `streams` open (spread over the running enrollments)
        base_rss = memory_kib(stack.api.pid).get("VmRSS", 0) * 1024 / 1e6
        until = loop.time() + 60
        many = [Sse(stack.api_url, running[i % n]) for i in range(opt.streams)]
        gate = asyncio.Semaphore(50)

        async def open_one(s: Sse) -> None:
            async with gate:
                task = asyncio.create_task(s.run(until))
                await s.opened.wait()
                tasks.append(task)

        tasks: list[asyncio.Task[None]] = []
        await asyncio.gather(*(open_one(s) for s in many))
        await asyncio.sleep(5.0)
        rss = memory_kib(stack.api.pid).get("VmRSS", 0) * 1024 / 1e6
        opened = sum(1 for s in many if s.status == 200)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        report.add(
            "stream.rss", f"API RSS with {opt.streams} open streams", rss, "MB", "< 200 MB",
            rss < 200 and opened == opt.streams, f"{opened} open, "
            f"{opt.streams - opened} refused; {base_rss:.0f} MB before they opened",
        )  # fmt: skip
    finally:
        await stack.close()
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"stream-{stamp}.json"
        raw["figures"] = [asdict(f) for f in report.figures]
        out.write_text(json.dumps(raw, indent=2, default=str))
        report.raw["results_file"] = str(out)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_bench")
    parser.add_argument("--quick", action="store_true", help="20 watchers, 100 streams, 10 s")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    opt = StreamOptions()
    if args.quick:
        opt = StreamOptions(watchers=20, streams=100, window_s=10.0, single_rounds=1)
    report = asyncio.run(run(opt))
    print_table(report)
    print(f"\nresults: {report.raw['results_file']}")
    return 1 if args.strict and any(f.ok is False for f in report.figures) else 0


if __name__ == "__main__":
    sys.exit(main())
