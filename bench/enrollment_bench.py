"""Enrollment benchmarks: each figure beside a target that is a ratio to a floor measured in
the same run, on the same Temporal dev server, PostgreSQL and machine.

Stack: a fresh PostgreSQL database, the Temporal dev server (SQLite file, our search
attributes), the mail catcher, the Stripe sandbox, the API (uvicorn) and one worker, each a
subprocess so its memory is measurable. Webhooks are signed events about real sales: our
checkout endpoint creates each Session and the sandbox (its own webhooks off) takes the
card, before the phase that delivers them, so no figure includes a sale; each webhook
ack includes the fulfilment gate (a Stripe retrieve and a read of our row).
Rate limiting is turned off (RATE_LIMIT_ENABLED=false): this measures the pipeline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import secrets
import shutil
import statistics
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from temporalio.client import Client

from bench.loadgen import HTTPError, Pool
from bench.noop import NoopEnrollmentWorkflow
from core.contracts import workflow_id_for
from core.db import make_engine
from core.settings import SANDBOX_API_KEY
from core.urls import WEBHOOK_PATH
from devstack.processes import (
    PYTHON,
    ROOT,
    Process,
    TemporalServer,
    api_process,
    free_port,
    sandbox_process,
    settings_env,
    wait_for_poller,
    wait_http,
    worker_process,
)
from tests.utils.helpers import create_database, drop_database, event, migrate, sell_many, signed
from tests.utils.helpers import sqlalchemy_url as shared_pg_url

log = logging.getLogger("bench")
RESULTS = ROOT / "bench" / "results"
WEBHOOK = WEBHOOK_PATH
VERIFY = "/api/payments/verify-session/"


@dataclass
class Options:
    starts_sequential: int = 200
    starts_concurrent: int = 1000
    concurrency: int = 50
    sales_concurrency: int = 16  # real sales made before a phase (setup, not measured)
    noop_e2e_runs: int = 30
    noop_throughput_s: float = 30.0
    in_flight: int = 20  # closed-loop workflows in flight for both throughput figures
    deliveries: int = 2000
    duplicate_share: float = 0.30
    drain_timeout_s: float = 300.0
    throughput_s: float = 60.0
    warmup_s: float = 5.0
    ready_runs: int = 10
    tool_latency_ms: int = 500
    pollers: int = 200
    poll_s: float = 20.0
    single_calls: int = 100
    profile: bool = False
    seed: int = 7
    only_lifecycle: bool = False  # `--only lifecycle`: the history count alone


@dataclass
class Figure:
    key: str
    label: str
    value: float | None
    unit: str
    target: str
    ok: bool | None  # None: no target (context)
    detail: str = ""


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, *args: Any, **kwargs: Any) -> Figure:
        fig = Figure(*args, **kwargs)
        self.figures.append(fig)
        mark = {True: "ok  ", False: "MISS", None: "    "}[fig.ok]
        print(f"  {mark} {fig.label}: {_fmt(fig.value)} {fig.unit} ({fig.target})", flush=True)
        return fig


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "p50": pct(ms, 50),
        "p90": pct(ms, 90),
        "p99": pct(ms, 99),
        "max": max(ms) if ms else float("nan"),
        "mean": statistics.fmean(ms) if ms else float("nan"),
    }


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---- the stack ---------------------------------------------------------------------------


class BenchStack:
    def __init__(self, work: Path, seed: int) -> None:
        self.work = work
        self.run_id = uuid.uuid4().hex[:6]
        self.secret = "whsec_bench_" + secrets.token_hex(8)
        self.task_queue = f"enrollment-bench-{self.run_id}"
        self.temporal = TemporalServer(work / "temporal")
        self.db_name = ""
        self.db_url = ""
        self.api_port = free_port()
        self.api: Process | None = None
        self.sandbox_port = free_port()
        self.sandbox: Process | None = None
        # The sandbox delivers its own webhooks when the bench pays through it (streams).
        self.sandbox_webhooks = False
        self.worker: Process | None = None
        self.mail: Process | None = None
        self.client: Client | None = None
        self.engine: sa.Engine | None = None
        self.rng = random.Random(seed)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.sandbox_port}"

    def app_env(self, **extra: object) -> dict[str, str]:
        assert self.mail is not None and self.mail.port is not None
        values: dict[str, object] = {
            "app_env": "development",
            "log_level": "INFO",
            "port": self.api_port,
            "public_base_url": self.api_url,
            "database_url": self.db_url,
            "temporal_address": self.temporal.address,
            "temporal_task_queue": self.task_queue,
            "stripe_webhook_secret": self.secret,
            "stripe_api_base": self.sandbox_url,
            "smtp_host": "127.0.0.1",
            "smtp_port": self.mail.port,
            "rate_limit_enabled": "false",
            "worker_metrics_port": 0,
            "worker_sdk_metrics_port": 0,
            "learning_database_url": "",
            "superset_url": "",
            "prefect_api_url": "",
            "docker_host": "",
            "tool_dev_latency_ms": 0,
            "reconcile_interval_minutes": 24 * 60,  # keep the reconcile Schedule out of it
            # The throughput phases count runs that closed: a run closes when it lands. The
            # lifecycle phase restarts the API with production's owner lifetime.
            "enrollment_owner_days": 0,
            "onramp_tool_faults": "",
        }
        values.update(extra)
        return settings_env(**values)

    async def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.db_name = create_database("onramp_bench")
        self.db_url = shared_pg_url(self.db_name)
        migrate(self.db_url)
        self.engine = make_engine(self.db_url)
        smtp_port = free_port()
        self.mail = Process(
            "mail",
            [PYTHON, "-m", "devstack.mailcatcher", "--smtp-port", str(smtp_port),
             "--http-port", str(free_port())],
            log_dir=self.work, port=smtp_port,
        ).start()  # fmt: skip
        await self.temporal.start_async()
        self.client = await Client.connect(self.temporal.address)
        self.mail.wait_port()
        webhook_url = f"{self.api_url}{WEBHOOK}" if self.sandbox_webhooks else ""
        self.sandbox = sandbox_process(
            self.sandbox_port, self.secret, webhook_url, log_dir=self.work
        ).start()
        await wait_http(f"{self.sandbox_url}/_sandbox/health", process=self.sandbox)
        self.api = api_process(self.app_env(), self.api_port, self.work).start()
        await wait_http(f"{self.api_url}/api/health", process=self.api)

    async def start_worker(self, **extra: object) -> Process:
        assert self.client is not None
        await self.stop_worker()
        self.worker = worker_process(self.app_env(**extra), self.work).start()
        await wait_for_poller(self.client, self.task_queue, self.worker.pid)
        return self.worker

    async def stop_worker(self) -> None:
        if self.worker is not None:
            await asyncio.to_thread(self.worker.stop)
            self.worker = None

    async def close(self) -> None:
        await self.stop_worker()
        for proc in (self.api, self.sandbox, self.mail):
            if proc is not None:
                await asyncio.to_thread(proc.stop)
        await asyncio.to_thread(self.temporal.stop)
        if self.engine is not None:
            self.engine.dispose()
        if self.db_name:
            drop_database(self.db_name)

    # -- helpers --------------------------------------------------------------------------

    async def sell(self, prefix: str, count: int, concurrency: int) -> list[dict[str, Any]]:
        """`count` real sales (`tests.utils.helpers.sell_many`) to `{prefix}-{run}-{i}@...`:
        Stripe's copies of the paid Sessions, for a phase to deliver events about."""
        emails = [f"{prefix}-{self.run_id}-{i}@example.com" for i in range(count)]
        return await sell_many(self.api_url, self.sandbox_url, emails, concurrency=concurrency)

    def delivery(self, session: dict[str, Any]) -> tuple[str, bytes, dict[str, str]]:
        """Stripe's completion event for a sold Session, signed."""
        payload, headers = signed(event("checkout.session.completed", session), self.secret)
        return str(session["id"]), payload, headers

    def status(self, checkout_session_id: str) -> str | None:
        assert self.engine is not None
        with self.engine.connect() as conn:
            return conn.execute(
                sa.text("select status from enrollment where checkout_session_id = :s"),
                {"s": checkout_session_id},
            ).scalar_one_or_none()

    def audited(self, checkout_session_id: str, action: str) -> bool:
        assert self.engine is not None
        with self.engine.connect() as conn:
            return bool(
                conn.execute(
                    sa.text(
                        "select count(*) from audit_event a join enrollment e"
                        " on a.enrollment_id = e.id"
                        " where e.checkout_session_id = :s and a.action = :a"
                    ),
                    {"s": checkout_session_id, "a": action},
                ).scalar_one()
            )

    def count(self, sql: str) -> int:
        assert self.engine is not None
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(sql)).scalar_one())


# ---- load helpers ------------------------------------------------------------------------


async def bounded_gather(
    count: int, concurrency: int, job: Callable[[int], Awaitable[float]]
) -> list[float]:
    """Run job(0..count-1), at most `concurrency` at a time; returns their durations."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    durations: list[float] = []

    async def runner() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            durations.append(await job(i))

    await asyncio.gather(*(runner() for _ in range(concurrency)))
    return durations


async def closed_loop(
    in_flight: int, warmup_s: float, window_s: float, one: Callable[[], Awaitable[bool]]
) -> dict[str, Any]:
    """Keep `in_flight` jobs running. The window opens once the loop is in steady state
    (at least `warmup_s` passed and `in_flight` jobs completed) and counts what completes
    inside it. Failures are counted over the whole run."""
    start = time.monotonic()
    window: list[float] = []  # [opened at]
    done_total = failed_total = ok = failed = 0
    latencies: list[float] = []

    def closed() -> bool:
        return bool(window) and time.monotonic() >= window[0] + window_s

    async def slot() -> None:
        nonlocal done_total, failed_total, ok, failed
        while not closed():
            began = time.monotonic()
            try:
                success = await one()
            except Exception as err:  # noqa: BLE001 (counted and reported)
                log.warning("closed loop job failed: %r", err)
                success = False
            now = time.monotonic()
            done_total += 1
            failed_total += 0 if success else 1
            if not window:
                if now - start >= warmup_s and done_total >= in_flight:
                    window.append(now)
            elif now <= window[0] + window_s:
                latencies.append(now - began)
                ok, failed = ok + success, failed + (not success)

    await asyncio.wait_for(
        asyncio.gather(*(slot() for _ in range(in_flight))), warmup_s + window_s + 600
    )
    return {
        "completed": ok,
        "failed": failed,
        "failed_total": failed_total,
        "ramp_s": (window[0] - start) if window else None,
        "window_s": window_s,
        "per_s": ok / window_s,
        "latency_ms": summary_ms(latencies),
    }


# ---- profiling ---------------------------------------------------------------------------


class Profiler:
    """py-spy over a subprocess for a phase, summarised as the heaviest frames (optional)."""

    def __init__(self, enabled: bool, out: Path) -> None:
        self.binary = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
        self.enabled = enabled and Path(self.binary).exists()
        self.out = out
        self.summaries: dict[str, list[tuple[str, float]]] = {}

    def start(self, name: str, pid: int, seconds: float) -> subprocess.Popen[bytes] | None:
        if not self.enabled:
            return None
        path = self.out / f"profile-{name}.txt"
        return subprocess.Popen(
            [self.binary, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "100",
             "-f", "raw", "-o", str(path), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def finish(self, name: str, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is None:
            return
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            return
        path = self.out / f"profile-{name}.txt"
        if path.exists():
            self.summaries[name] = top_frames(path)


OWN_CODE = ("api/", "core/", "activities/", "workflows/", "support/")


def top_frames(path: Path, limit: int = 12) -> list[tuple[str, float]]:
    """The heaviest (our innermost frames > leaf frame) pairs in py-spy's collapsed stacks,
    as a share of all samples: where our code spends the process's time."""
    counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not count_s.isdigit():
            continue
        frames = stack.split(";")
        total += int(count_s)
        own = [f.split(" (")[0] for f in frames if f.rpartition("(")[2].startswith(OWN_CODE)]
        leaf = frames[-1].split(" (")[0] or "?"
        counts[" > ".join(own[-2:] or ["(no app frame)"]) + " || " + leaf] += int(count_s)
    return [(key, 100 * n / total) for key, n in counts.most_common(limit)] if total else []


# ---- the phases --------------------------------------------------------------------------


async def phase_floor(stack: BenchStack, opt: Options, report: Report) -> None:
    assert stack.client is not None
    client = stack.client
    idle_queue = f"bench-idle-{stack.run_id}"  # nobody polls: StartWorkflow alone

    async def start_one(i: int, prefix: str) -> float:
        began = time.monotonic()
        await client.start_workflow(
            NoopEnrollmentWorkflow.run, str(i), id=f"{prefix}-{i}", task_queue=idle_queue
        )
        return time.monotonic() - began

    seq = [await start_one(i, f"start-seq-{stack.run_id}") for i in range(opt.starts_sequential)]
    conc = await bounded_gather(
        opt.starts_concurrent, opt.concurrency, lambda i: start_one(i, f"start-c-{stack.run_id}")
    )
    report.raw["start_sequential_ms"] = summary_ms(seq)
    report.raw["start_concurrent_ms"] = summary_ms(conc)

    noop_queue = f"bench-noop-{stack.run_id}"
    worker = Process(
        "noop-worker",
        [PYTHON, "-m", "bench.noop", "--address", stack.temporal.address, "--task-queue",
         noop_queue],
        log_dir=stack.work,
    ).start()  # fmt: skip
    try:
        await wait_for_poller(client, noop_queue, worker.pid)

        async def noop_run(i: int, prefix: str) -> float:
            began = time.monotonic()
            await client.execute_workflow(
                NoopEnrollmentWorkflow.run, str(i), id=f"{prefix}-{i}", task_queue=noop_queue
            )
            return time.monotonic() - began

        for i in range(3):  # warm the worker's sticky cache and imports
            await noop_run(i, f"noop-warm-{stack.run_id}")
        e2e = [await noop_run(i, f"noop-e2e-{stack.run_id}") for i in range(opt.noop_e2e_runs)]
        report.raw["noop_e2e_ms"] = summary_ms(e2e)
        first = client.get_workflow_handle(f"noop-e2e-{stack.run_id}-0")
        report.raw["noop_history_events"] = len([e async for e in first.fetch_history_events()])
        counter = iter(range(10**9))

        async def noop_loop() -> bool:
            i = next(counter)
            await client.execute_workflow(
                NoopEnrollmentWorkflow.run, str(i), id=f"noop-tp-{stack.run_id}-{i}",
                task_queue=noop_queue,
            )  # fmt: skip
            return True

        report.raw["noop_throughput"] = await closed_loop(
            opt.in_flight, opt.warmup_s, opt.noop_throughput_s, noop_loop
        )
        report.raw["noop_worker_memory_mib"] = worker.memory_mib()
    finally:
        await asyncio.to_thread(worker.stop)

    s, c = report.raw["start_sequential_ms"], report.raw["start_concurrent_ms"]
    report.add(
        "floor.start", "Floor: StartWorkflow, 1 caller", s["p50"], "ms p50", "floor", None,
        f"p99 {s['p99']:.1f} ms, n={s['n']}",
    )  # fmt: skip
    report.add(
        "floor.start_concurrent", f"Floor: StartWorkflow, {opt.concurrency} concurrent",
        c["p50"], "ms p50", "floor", None, f"p99 {c['p99']:.1f} ms, n={c['n']}",
    )  # fmt: skip
    e = report.raw["noop_e2e_ms"]
    report.add(
        "floor.noop_e2e", "Floor: no-op enrollment-shaped workflow, end to end", e["p50"],
        "ms p50", "floor", None, f"p99 {e['p99']:.1f} ms, n={e['n']}",
    )  # fmt: skip
    t = report.raw["noop_throughput"]
    report.add(
        "floor.noop_throughput", "Floor: no-op workflows completed, 1 worker", t["per_s"], "/s",
        "floor", None, f"{opt.in_flight} in flight, {t['window_s']:.0f} s window",
    )  # fmt: skip


async def noop_throughput(stack: BenchStack, opt: Options, window_s: float, tag: str) -> float:
    """No-op workflows completed per second by a fresh no-op worker, closed loop."""
    assert stack.client is not None
    client = stack.client
    queue = f"bench-noop-{tag}-{stack.run_id}"
    worker = Process(
        "noop-worker",
        [PYTHON, "-m", "bench.noop", "--address", stack.temporal.address, "--task-queue", queue],
        log_dir=stack.work,
    ).start()  # fmt: skip
    counter = iter(range(10**9))

    async def one() -> bool:
        i = next(counter)
        await client.execute_workflow(
            NoopEnrollmentWorkflow.run,
            str(i),
            id=f"noop-{tag}-{stack.run_id}-{i}",
            task_queue=queue,
        )
        return True

    try:
        await wait_for_poller(client, queue, worker.pid)
        result = await closed_loop(opt.in_flight, opt.warmup_s, window_s, one)
    finally:
        await asyncio.to_thread(worker.stop)
    rate: float = result["per_s"]
    return rate


async def deliver(http: Pool, payload: bytes, headers: dict[str, str]) -> tuple[float, int, str]:
    began = time.monotonic()
    r = await http.post(WEBHOOK, content=payload, headers=headers)
    elapsed = time.monotonic() - began
    outcome = r.json().get("outcome", r.json().get("error", "")) if r.content else ""
    return elapsed, r.status_code, str(outcome)


async def phase_webhooks(
    stack: BenchStack, opt: Options, report: Report, profiler: Profiler
) -> list[str]:
    """2,000 signed deliveries, 50 at a time, 30% of them repeats, with no worker running
    (the ack must not depend on it); returns the unique Checkout Session ids. The sales
    they are about are made first, `sales_concurrency` at a time, outside the figures."""
    assert stack.api is not None
    unique = round(opt.deliveries * (1 - opt.duplicate_share))
    began = time.monotonic()
    sold = await stack.sell("wh", unique, opt.sales_concurrency)
    report.raw["webhook_sales_s"] = round(time.monotonic() - began, 1)
    print(f"  {unique} sales made in {report.raw['webhook_sales_s']} s (setup)", flush=True)
    built = [stack.delivery(session) for session in sold]
    deliveries = [(p, h) for _, p, h in built]
    deliveries += [stack.rng.choice(deliveries) for _ in range(opt.deliveries - unique)]
    stack.rng.shuffle(deliveries)
    statuses: Counter[int] = Counter()
    outcomes: Counter[str] = Counter()
    prof = profiler.start("api-webhooks", stack.api.pid, 15)
    async with Pool(stack.api_url, opt.concurrency) as http:
        for payload, headers in deliveries[:20]:  # warm connections and code paths
            await deliver(http, payload, headers)

        async def job(i: int) -> float:
            elapsed, status, outcome = await deliver(http, *deliveries[i])
            statuses[status] += 1
            outcomes[outcome] += 1
            return elapsed

        began = time.monotonic()
        latencies = await bounded_gather(len(deliveries), opt.concurrency, job)
        wall = time.monotonic() - began
    profiler.finish("api-webhooks", prof)
    s = summary_ms(latencies)
    report.raw["webhook_ack_ms"] = s
    report.raw["webhook_statuses"] = dict(statuses)
    report.raw["webhook_outcomes"] = dict(outcomes)
    report.raw["webhook_rate_per_s"] = len(deliveries) / wall
    report.raw["api_memory_after_webhooks_mib"] = stack.api.memory_mib()
    floor_c = report.raw["start_concurrent_ms"]["p50"]
    floor_1 = report.raw["start_sequential_ms"]["p50"]
    ratio = s["p50"] / floor_c
    report.add(
        "webhook.p50", f"Webhook ack p50 ({opt.deliveries} deliveries, {opt.concurrency} "
        f"concurrent, {opt.duplicate_share:.0%} repeats)", s["p50"], "ms",
        f"<= 2x StartWorkflow p50 at {opt.concurrency} concurrent ({2 * floor_c:.1f} ms)",
        ratio <= 2.0,
        f"{ratio:.2f}x; vs 1-caller StartWorkflow p50: {s['p50'] / floor_1:.1f}x; "
        f"{report.raw['webhook_rate_per_s']:.0f} acks/s; statuses {dict(statuses)}",
    )  # fmt: skip
    report.add(
        "webhook.p99", "Webhook ack p99", s["p99"], "ms", "context", None,
        f"StartWorkflow p99 at {opt.concurrency} concurrent: "
        f"{report.raw['start_concurrent_ms']['p99']:.1f} ms",
    )  # fmt: skip
    report.add(
        "webhook.non_2xx", "Webhook deliveries not answered 2xx",
        sum(n for code, n in statuses.items() if not 200 <= code < 300), "", "0",
        all(200 <= code < 300 for code in statuses),
    )  # fmt: skip
    return [sid for sid, _, _ in built]


async def workflow_runs(client: Client, query: str) -> list[tuple[str, str, str]]:
    return [
        (w.id, w.run_id, w.status.name if w.status else "")
        async for w in client.list_workflows(query, page_size=1000)
    ]


async def phase_drain(
    stack: BenchStack, opt: Options, report: Report, session_ids: list[str], profiler: Profiler
) -> None:
    """Start the worker on the storm's backlog, so every one of its enrollments is in flight
    at once. Runs until every account exists (or everything finished, or the time bound),
    measuring the worker's memory, checks that nothing was duplicated, then terminates
    what is left so the later phases run on an empty queue."""
    assert stack.client is not None and stack.api is not None
    client = stack.client
    expected = {workflow_id_for(s) for s in session_ids}
    n = len(expected)
    query = f"WorkflowType = 'EnrollmentWorkflow' AND TaskQueue = '{stack.task_queue}'"
    runs: list[tuple[str, str, str]] = []
    for _ in range(100):  # visibility is eventually consistent
        runs = await workflow_runs(client, query)
        if len(runs) >= n:
            break
        await asyncio.sleep(0.2)
    in_flight = sum(1 for _, _, status in runs if status == "RUNNING")
    storm = "email LIKE 'wh-%'"
    worker = await stack.start_worker()
    began = time.monotonic()
    prof = profiler.start("worker-drain", worker.pid, 20)
    picked_up_s = accounts_s = None
    peak_rss = 0.0
    while time.monotonic() - began < opt.drain_timeout_s:
        peak_rss = max(peak_rss, worker.memory_mib().get("rss", 0))
        elapsed = time.monotonic() - began
        # Our checkout wrote every row; the first activity records the payment.
        picked = stack.count(
            f"SELECT count(*) FROM enrollment WHERE {storm} AND paid_at IS NOT NULL"
        )
        if picked_up_s is None and picked >= min(n, 1000):
            picked_up_s = elapsed
        linked = stack.count(
            f"SELECT count(*) FROM enrollment WHERE {storm} AND user_id IS NOT NULL"
        )
        if accounts_s is None and linked >= n:
            accounts_s = elapsed
        running = await client.count_workflows(f"{query} AND ExecutionStatus = 'Running'")
        if running.count == 0 or (accounts_s is not None and elapsed >= accounts_s + 5):
            break
        await asyncio.sleep(1.0)
    profiler.finish("worker-drain", prof)
    drain_s = time.monotonic() - began
    worker_mem = worker.memory_mib()
    runs = await workflow_runs(client, query)
    ids = Counter(wid for wid, _, _ in runs)
    statuses = Counter(status for _, _, status in runs)
    users = stack.count(f'SELECT count(*) FROM "user" WHERE {storm}')
    enrollments = stack.count(f"SELECT count(*) FROM enrollment WHERE {storm}")
    linked = stack.count(
        f"SELECT count(DISTINCT user_id) FROM enrollment WHERE {storm} AND user_id IS NOT NULL"
    )
    ready = stack.count(f"SELECT count(*) FROM enrollment WHERE {storm} AND status = 'READY'")
    dup_workflows = sum(k - 1 for k in ids.values() if k > 1)
    missing = len(expected - set(ids))
    completed = statuses.get("COMPLETED", 0)
    report.raw["drain"] = {
        "in_flight": in_flight, "seconds": drain_s, "worker": worker_mem,
        "picked_up_1000_s": picked_up_s, "all_accounts_s": accounts_s,
        "workflows": len(runs), "statuses": dict(statuses), "users": users,
        "enrollments": enrollments, "linked_users": linked, "ready": ready,
        "duplicate_workflow_runs": dup_workflows, "missing": missing,
    }  # fmt: skip
    accounts_note = (
        "every account created"
        if accounts_s is not None
        else f"{users} of {n} accounts existed at the time bound (checked those)"
    )
    report.add(
        "webhook.duplicates", "Duplicate workflows / accounts from the storm",
        dup_workflows + max(0, users - linked), "",
        f"0 ({n} payments -> {n} workflows, 1 user each)",
        dup_workflows == 0 and missing == 0 and len(runs) == n and users == linked <= n,
        f"Temporal: {len(runs)} runs of {len(ids)} ids; DB: {users} users, {linked} linked to "
        f"one storm enrollment each, {enrollments} enrollments; {accounts_note}",
    )  # fmt: skip
    report.add(
        "drain", f"Backlog of {in_flight} enrollments on 1 worker", completed / drain_s,
        "done/s", "context", None,
        f"{completed} completed, {ready} READY in {drain_s:.0f} s; 1,000 picked up after "
        f"{_fmt(picked_up_s)} s, every account after {_fmt(accounts_s)} s",
    )  # fmt: skip
    worker_peak_mb = worker_mem.get("peak", 0) * 1.048576
    report.add(
        "memory.worker", f"Worker peak RSS, {in_flight} enrollments in flight", worker_peak_mb,
        "MB", "< 300 MB", worker_peak_mb < 300,
        f"RSS at the end {worker_mem.get('rss', 0) * 1.048576:.0f} MB",
    )  # fmt: skip
    report.raw["api_memory_after_drain_mib"] = stack.api.memory_mib()
    await stack.stop_worker()
    await terminate_running(client, query)


async def terminate_running(client: Client, query: str) -> int:
    handles = [
        client.get_workflow_handle(w.id, run_id=w.run_id)
        async for w in client.list_workflows(f"{query} AND ExecutionStatus = 'Running'")
    ]
    semaphore = asyncio.Semaphore(20)

    async def stop(handle: Any) -> None:
        async with semaphore:
            try:
                await handle.terminate(reason="benchmark phase over")
            except Exception:  # noqa: BLE001 (finished meanwhile)
                pass

    await asyncio.gather(*(stop(h) for h in handles))
    return len(handles)


async def phase_throughput(
    stack: BenchStack, opt: Options, report: Report, profiler: Profiler
) -> list[str]:
    """Closed loop through the real entry point: webhook in, wait for the workflow's end.
    Returns the finished Checkout Session ids."""
    assert stack.client is not None
    # The floor is measured right before and right after, on the same (noisy) machine.
    before = await noop_throughput(stack, opt, opt.noop_throughput_s / 2, "before")
    # A job is a webhook and its enrollment, not a sale: enough sales for the no-op rate
    # (an upper bound) over the warm-up and the window are made first; past those a job
    # makes its own (counted, so a reader knows the figure then includes sales).
    stock = await stack.sell(
        "tp",
        round(before * (opt.warmup_s + opt.throughput_s)) + 2 * opt.in_flight,
        opt.sales_concurrency,
    )
    sold_inside = 0
    worker = await stack.start_worker()
    client = stack.client
    finished: list[str] = []
    counter = iter(range(10**9))
    async with Pool(stack.api_url, opt.in_flight) as http:

        async def one() -> bool:
            nonlocal sold_inside
            i = next(counter)
            if i < len(stock):
                session = stock[i]
            else:
                sold_inside += 1
                (session,) = await stack.sell(f"tp-extra-{i}", 1, 1)
            sid, payload, headers = stack.delivery(session)
            _, status, _ = await deliver(http, payload, headers)
            if status != 200:
                return False
            state = await client.get_workflow_handle(workflow_id_for(sid)).result()
            ok = state.get("status") == "READY" if isinstance(state, dict) else False
            if ok:
                finished.append(sid)
            return ok

        prof = profiler.start("worker-throughput", worker.pid, 20)
        result = await closed_loop(opt.in_flight, opt.warmup_s, opt.throughput_s, one)
        profiler.finish("worker-throughput", prof)
    await stack.stop_worker()
    after = await noop_throughput(stack, opt, opt.noop_throughput_s / 2, "after")
    report.raw["throughput"] = {
        **result,
        "sold_before": len(stock),
        "sold_inside": sold_inside,
    }
    if sold_inside:
        report.notes.append(
            f"throughput: {sold_inside} jobs made their own sale (stock of "
            f"{len(stock)} ran out); their latency includes it"
        )
    report.raw["noop_throughput_bracket"] = {"before": before, "after": after}
    floor = (before + after) / 2
    ratio = result["per_s"] / floor if floor else 0.0
    report.add(
        "throughput", f"Enrollments completed, 1 worker, {opt.throughput_s:.0f} s",
        result["per_s"], "/s", f">= 0.7x no-op ({0.7 * floor:.1f}/s), 0 failures",
        ratio >= 0.7 and result["failed_total"] == 0,
        f"{ratio:.2f}x of the no-op measured just before/after ({before:.1f}, {after:.1f}/s); "
        f"{result['completed']} done in the window, {result['failed_total']} failed in the "
        f"run; latency p50 {result['latency_ms']['p50']:.0f} ms",
    )  # fmt: skip
    return finished


async def phase_time_to_ready(stack: BenchStack, opt: Options, report: Report) -> None:
    sold = await stack.sell("ready", opt.ready_runs + 1, opt.sales_concurrency)
    await stack.start_worker(tool_dev_latency_ms=opt.tool_latency_ms)
    times: list[float] = []
    async with Pool(stack.api_url, timeout=30) as http:
        for i, session in enumerate(sold):
            sid, payload, headers = stack.delivery(session)
            began = time.monotonic()
            r = await http.post(WEBHOOK, content=payload, headers=headers)
            assert r.status_code == 200, r.text
            deadline = began + 60
            while time.monotonic() < deadline:
                r = await http.get(VERIFY, params={"session_id": sid})
                if r.status_code == 200:
                    break
                await asyncio.sleep(0.02)
            if i:  # the first run warms the worker
                times.append(time.monotonic() - began)
    s = summary_ms(times)
    report.raw["time_to_ready_ms"] = s
    assert stack.client is not None
    handle = stack.client.get_workflow_handle(workflow_id_for(sid))
    await handle.result()
    kinds = Counter([str(e.WhichOneof("attributes")) async for e in handle.fetch_history_events()])
    report.raw["enrollment_history_events"] = {"total": sum(kinds.values()), **dict(kinds)}
    report.add(
        "history", "History events of one enrollment", sum(kinds.values()), "",
        f"context (no-op shape: {report.raw.get('noop_history_events', '?')})", None,
        ", ".join(f"{k.removesuffix('_event_attributes')} {n}" for k, n in kinds.most_common(6)),
    )  # fmt: skip
    bound = 1.3 * (report.raw["noop_e2e_ms"]["p50"] + opt.tool_latency_ms)
    report.add(
        "ready", f"Time to ready (webhook -> verify-session 200), tools {opt.tool_latency_ms} ms",
        s["p50"], "ms p50", f"<= 1.3x (no-op e2e + {opt.tool_latency_ms} ms) = {bound:.0f} ms",
        s["p50"] <= bound, f"p99 {s['p99']:.0f} ms, n={s['n']}, polled every 20 ms",
    )  # fmt: skip


# The old design's figure (an EnrollmentWorkflow, then a RevokeWorkflow beside it), measured
# with this phase on the commit that added it (two runs: 64 + 41, 73 + 38; workflow tasks
# batch differently from run to run).
SEPARATE_REVOKE_HISTORY_EVENTS = "105-111"


async def enrollment_history_events(client: Client, email: str) -> dict[str, int]:
    """History events of every workflow run about one student's enrollment (each run of a
    continue-as-new chain, any revoke or reinstate workflow), by workflow id."""
    quoted = email.replace('"', "")
    counts: dict[str, int] = {}
    async for wf in client.list_workflows(f'EnrollmentEmail = "{quoted}"'):
        handle = client.get_workflow_handle(wf.id, run_id=wf.run_id)
        n = len([e async for e in handle.fetch_history_events()])
        counts[wf.id] = counts.get(wf.id, 0) + n
    return counts


async def phase_lifecycle(stack: BenchStack, opt: Options, report: Report) -> None:
    """One DP enrollment from its purchase through a full refund: the history events of
    every workflow it used, summed once the refund has been handled and nothing moves."""
    assert stack.client is not None and stack.engine is not None and stack.api is not None
    # The API starts each run with its owner's lifetime: production's, for this phase.
    await asyncio.to_thread(stack.api.stop)
    stack.api = api_process(
        stack.app_env(enrollment_owner_days=120), stack.api_port, stack.work
    ).start()
    await wait_http(f"{stack.api_url}/api/health", process=stack.api)
    if stack.worker is None:
        await stack.start_worker()
    [session] = await stack.sell("lifecycle", 1, 1)
    sid, payload, headers = stack.delivery(session)
    email = str(session.get("customer_email") or (session.get("metadata") or {}).get("email"))
    async with Pool(stack.api_url, timeout=30) as http:
        r = await http.post(WEBHOOK, content=payload, headers=headers)
        assert r.status_code == 200, r.text
        await _until(lambda: stack.status(sid) == "READY", 60, "READY")
        pi = session["payment_intent"]
        pi = pi["id"] if isinstance(pi, dict) else pi
        async with httpx.AsyncClient(
            base_url=stack.sandbox_url,
            timeout=30,
            headers={"Authorization": f"Bearer {SANDBOX_API_KEY}"},
        ) as sb:
            r = await sb.post(
                "/v1/refunds",
                data={"payment_intent": pi},
                headers={"Idempotency-Key": f"bench-{pi}"},
            )
            assert r.status_code == 200, r.text
            events = (await sb.get("/_sandbox/events", params={"type": "charge.refunded"})).json()
        [refunded] = [
            e["event"] for e in events["data"]
            if e["event"]["data"]["object"].get("payment_intent") == pi
        ]  # fmt: skip
        body, signature = signed(refunded, stack.secret)
        r = await http.post(WEBHOOK, content=body, headers=signature)
        assert r.status_code == 200, r.text
    await _until(lambda: stack.audited(sid, "enrollment_revoked"), 60, "revoked")
    # Settled: the same count twice, a second apart (the last workflow task completed).
    counts: dict[str, int] = {}
    for _ in range(30):
        again = await enrollment_history_events(stack.client, email)
        if again == counts:
            break
        counts = again
        await asyncio.sleep(1.0)
    total = sum(counts.values())
    report.raw["lifecycle_history_events"] = {"total": total, **counts}
    old = SEPARATE_REVOKE_HISTORY_EVENTS
    report.add(
        "lifecycle_history", "History events per enrollment (DP, purchase through refund)",
        total, "", f"context (separate RevokeWorkflow: {old})", None,
        f"{len(counts)} workflow(s): " + ", ".join(f"{k} {n}" for k, n in counts.items()),
    )  # fmt: skip


async def _until(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"never {what}")
        await asyncio.sleep(0.1)


async def phase_verify_load(
    stack: BenchStack, opt: Options, report: Report, finished: list[str], profiler: Profiler
) -> None:
    """verify-session on running and finished enrollments: one caller, then 200 pollers that
    poll as the success page does (every Retry-After second), then 200 unpaced, then 200
    paced again while the running enrollments' first tools finish together.

    The running enrollments' tools take `tool_s`: past the first two windows, so there
    the running ones sit in their tool step (the figure with the target), and inside the
    third, where 64 tool activities (the worker's slots) complete within a few seconds."""
    assert stack.api is not None
    window_s = opt.poll_s
    # Setup (~8 s) and the first two windows (1.5 windows) pass before the third opens;
    # the first wave of tools finishes ~0.4 window into it.
    tool_s = 8.0 + 1.9 * window_s
    half = opt.pollers // 2
    sold = await stack.sell("poll", half, opt.sales_concurrency)
    began = time.monotonic()
    await stack.start_worker(tool_dev_latency_ms=int(tool_s * 1000))
    running: list[str] = []
    async with Pool(stack.api_url) as http:
        for session in sold:
            sid, payload, headers = stack.delivery(session)
            r = await http.post(WEBHOOK, content=payload, headers=headers)
            assert r.status_code == 200, r.text
            running.append(sid)
    done = finished[:half]
    if len(done) < half:
        report.notes.append(f"only {len(done)} finished enrollments to poll (wanted {half})")
    targets = [("running", s) for s in running] + [("finished", s) for s in done]
    await asyncio.sleep(2.0)  # let the running ones reach their tool step
    single: dict[str, list[float]] = {"running": [], "finished": []}
    codes: Counter[str] = Counter()
    async with Pool(stack.api_url) as http:
        pools = {"running": running, "finished": done or running}
        for i in range(opt.single_calls):
            kind = "finished" if i % 2 and done else "running"
            sid = pools[kind][(i // 2) % len(pools[kind])]
            t0 = time.monotonic()
            r = await http.get(VERIFY, params={"session_id": sid})
            single[kind].append(time.monotonic() - t0)
            codes[f"{kind}:{r.status_code}"] += 1
    one_caller = single["running"] + single["finished"]
    single_p50 = summary_ms(one_caller)["p50"]
    landed: set[str] = set()  # running enrollments that answered 200 during a window

    async def poller(
        http: Pool, sid: str, until: float, paced: bool, out: list[float], tag: str
    ) -> None:
        await asyncio.sleep(random.random() * (1.0 if paced else 0.05))
        while time.monotonic() < until:
            t0 = time.monotonic()
            try:
                r = await http.get(VERIFY, params={"session_id": sid})
            except HTTPError as err:
                codes[f"{tag}:{type(err).__name__}"] += 1
                out.append(time.monotonic() - t0)  # a failed poll still took this long
                await asyncio.sleep(1.0)
                continue
            out.append(time.monotonic() - t0)
            codes[f"{tag}:{r.status_code}"] += 1
            if r.status_code == 200 and sid in running:
                landed.add(sid)
            if paced:
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))

    tools_sql = (
        'SELECT count(*) FROM tool_account t JOIN "user" u ON u.id = t.user_id '
        f"WHERE u.email LIKE 'poll-{stack.run_id}-%'"
    )
    tools_done: dict[str, int] = {}  # tool accounts of the running ones provisioned per window

    async def window(seconds: float, paced: bool, tag: str) -> tuple[list[float], float, int]:
        out: list[float] = []
        before, tools_before = len(landed), await asyncio.to_thread(stack.count, tools_sql)
        opened = time.monotonic()
        until = opened + seconds
        await asyncio.gather(*(poller(http, sid, until, paced, out, tag) for _, sid in targets))
        tools_done[tag] = await asyncio.to_thread(stack.count, tools_sql) - tools_before
        return out, opened - began, len(landed) - before

    # One connection per poller, as each student's browser holds its own.
    async with Pool(stack.api_url, len(targets)) as http:
        prof = profiler.start("api-verify", stack.api.pid, int(window_s))
        paced, paced_at, paced_landed = await window(window_s, True, "paced")
        profiler.finish("api-verify", prof)
        unpaced, _, _ = await window(window_s / 2, False, "unpaced")
        burst, burst_at, burst_landed = await window(window_s, True, "burst")
    report.raw["verify"] = {
        "single_running_ms": summary_ms(single["running"]),
        "single_finished_ms": summary_ms(single["finished"]),
        "paced_ms": summary_ms(paced),
        "unpaced_ms": summary_ms(unpaced),
        "burst_ms": summary_ms(burst),
        "paced_rate_per_s": len(paced) / window_s,
        "unpaced_rate_per_s": len(unpaced) / (window_s / 2),
        "running_tools_s": tool_s,
        "windows_opened_s": {"paced": round(paced_at, 1), "burst": round(burst_at, 1)},
        "running_landed": {"paced": paced_landed, "burst": burst_landed},
        "running_tools_provisioned": tools_done,
        "codes": dict(codes),
    }
    v = report.raw["verify"]
    report.add(
        "verify.single", "verify-session, 1 caller (running + finished)", single_p50, "ms p50",
        "floor", None,
        f"running p50 {v['single_running_ms']['p50']:.1f} ms, finished p50 "
        f"{v['single_finished_ms']['p50']:.1f} ms",
    )  # fmt: skip
    p99 = v["paced_ms"]["p99"]
    report.add(
        "verify.p99", f"verify-session p99, {len(targets)} pollers (1 poll/s each, as the page)",
        p99, "ms", f"<= 3x 1-caller p50 ({3 * single_p50:.1f} ms)", p99 <= 3 * single_p50,
        f"{p99 / single_p50:.1f}x; p50 {v['paced_ms']['p50']:.1f} ms; "
        f"{v['paced_rate_per_s']:.0f} req/s; running ones in their tool step "
        f"({tools_done['paced']} tools finished, {paced_landed} landed)",
    )  # fmt: skip
    u = v["unpaced_ms"]
    report.add(
        "verify.unpaced", f"verify-session p99, {len(targets)} callers without pause",
        u["p99"], "ms", "context (Little's law: callers in flight / rate)", None,
        f"p50 {u['p50']:.0f} ms; {v['unpaced_rate_per_s']:.0f} req/s",
    )  # fmt: skip
    b = v["burst_ms"]
    report.add(
        "verify.burst", f"verify-session p99, {len(targets)} pollers while tools finish",
        b["p99"], "ms", "context (the worker busy with the completions)", None,
        f"p50 {b['p50']:.0f} ms; {tools_done['burst']} tools finished and {burst_landed} "
        f"running enrollments landed in the window (tools {tool_s:.0f} s); codes {dict(codes)}",
    )  # fmt: skip
    api_peak = stack.api.memory_mib().get("peak", 0) * 1.048576
    after_storm = report.raw["api_memory_after_webhooks_mib"].get("peak", 0) * 1.048576
    report.add(
        "memory.api", "API peak RSS over the run (storm, drain, 200 pollers)", api_peak, "MB",
        "< 200 MB", api_peak < 200,
        f"after the storm {after_storm:.0f} MB",
    )  # fmt: skip


# ---- entry -------------------------------------------------------------------------------


def print_table(report: Report) -> None:
    rows = [("", "figure", "value", "target", "detail")]
    for f in report.figures:
        mark = {True: "ok", False: "MISS", None: ""}[f.ok]
        rows.append((mark, f.label, f"{_fmt(f.value)} {f.unit}".strip(), f.target, f.detail))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
    misses = [f.label for f in report.figures if f.ok is False]
    print()
    print("MISSED: " + "; ".join(misses) if misses else "Every target met.")
    for note in report.notes:
        print("note:", note)


async def run(opt: Options) -> Report:
    report = Report()
    report.raw["machine"] = {"cpus": os.cpu_count(), "loadavg_start": loadavg()}
    report.raw["options"] = asdict(opt)
    report.notes.append(
        "rate limiting off via RATE_LIMIT_ENABLED=false (Settings.rate_limit_enabled)"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"onramp-bench-{stamp}"
    profiler = Profiler(opt.profile, RESULTS)
    stack = BenchStack(work, opt.seed)
    out = RESULTS / f"enrollment-{stamp}.json"
    report.raw["results_file"] = str(out)

    def save() -> None:
        report.raw["profiles"] = profiler.summaries
        body = {"figures": [asdict(f) for f in report.figures], "raw": report.raw}
        out.write_text(json.dumps({**body, "notes": report.notes}, indent=2, default=str))

    async def phase(name: str, step: Callable[[], Awaitable[Any]], default: Any = None) -> Any:
        """One phase; a phase that breaks is reported and the run goes on."""
        print(f"{name} ... (load {loadavg()[0]})", flush=True)
        began = time.monotonic()
        try:
            return await step()
        except Exception as err:  # noqa: BLE001 (reported in the table and the JSON)
            log.exception("phase %s failed", name)
            report.notes.append(f"phase {name!r} failed: {err!r}")
            return default
        finally:
            report.raw.setdefault("phase_seconds", {})[name] = round(time.monotonic() - began, 1)
            save()

    try:
        await stack.start()
        if opt.only_lifecycle:
            await phase("lifecycle", lambda: phase_lifecycle(stack, opt, report))
            return report
        await phase("floor", lambda: phase_floor(stack, opt, report))
        sessions = await phase(
            "webhook storm", lambda: phase_webhooks(stack, opt, report, profiler), []
        )
        await phase("drain + memory", lambda: phase_drain(stack, opt, report, sessions, profiler))
        finished = await phase(
            "throughput", lambda: phase_throughput(stack, opt, report, profiler), []
        )
        await phase("time to ready", lambda: phase_time_to_ready(stack, opt, report))
        await phase(
            "verify-session under load",
            lambda: phase_verify_load(stack, opt, report, finished, profiler),
        )
        await phase("lifecycle", lambda: phase_lifecycle(stack, opt, report))
    finally:
        report.raw["machine"]["loadavg_end"] = loadavg()
        await stack.close()
        save()
    return report
