"""Checkout creation with the cohort seat hold, against the same checkout without it.

    python -m bench.seats_bench [--quick] [--strict]

Serves the real app and the offline Stripe sandbox on a throwaway PostgreSQL database and
creates Checkout Sessions through POST /api/payments/create-anonymous-checkout/, all on one
cohort (so concurrent buyers contend for one ledger row), one request at a time and 16 at
a time. "Without the hold" is the same process and code path with the ledger's two calls
(`reserve_seat`, `attach_session`) replaced by stand-ins that touch no table: the figure is
what the hold costs a buyer, measured in the same run, rounds of each interleaved.
Target: p50 with the hold at most 1.5x the p50 without. Writes bench/results/seats.json.
"""

import argparse
import asyncio
import json
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from api.main import create_app
from api.payments import checkout as checkout_module
from core.cohorts import service as cohorts
from core.settings import Settings
from core.urls import WEBHOOK_PATH
from sandbox.app import create_app as create_sandbox
from sandbox.server import BackgroundServer
from tests.utils.helpers import create_database, drop_database, free_port, migrate, sqlalchemy_url

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "seats.json"
TARGET_RATIO = 1.5
CHECKOUT = "/api/payments/create-anonymous-checkout/"


@contextmanager
def without_hold() -> Any:
    """The checkout as it was before cohorts: no ledger read or write."""
    real_reserve, real_attach = cohorts.reserve_seat, cohorts.attach_session

    def reserve(db: Any, **kw: Any) -> cohorts.CheckoutSeat:
        return cohorts.CheckoutSeat(cohort_id=1, code="DP-2027-01")

    cohorts.reserve_seat = reserve  # type: ignore[assignment]
    cohorts.attach_session = lambda *a, **k: None  # type: ignore[assignment]
    try:
        yield
    finally:
        cohorts.reserve_seat, cohorts.attach_session = real_reserve, real_attach


async def one_round(http: httpx.AsyncClient, n: int, concurrency: int, tag: str) -> list[float]:
    semaphore = asyncio.Semaphore(concurrency)
    times: list[float] = []

    async def one(i: int) -> None:
        async with semaphore:
            body = {"email": f"{tag}{i}@example.com", "name": "Bench Buyer", "track": "DP"}
            started = time.perf_counter()
            r = await http.post(CHECKOUT, json=body)
            times.append(time.perf_counter() - started)
            assert r.status_code == 200, r.text

    await asyncio.gather(*(one(i) for i in range(n)))
    return times


async def measure(base_url: str, rounds: int, n: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as http:
        await one_round(http, 20, 4, "warmup")
        for concurrency in (1, 16):
            with_hold: list[float] = []
            without: list[float] = []
            for r in range(rounds):
                with_hold += await one_round(http, n, concurrency, f"h{concurrency}r{r}x")
                with without_hold():
                    without += await one_round(http, n, concurrency, f"n{concurrency}r{r}x")
            p50_with = statistics.median(with_hold) * 1000
            p50_without = statistics.median(without) * 1000
            results[f"concurrency_{concurrency}"] = {
                "requests_each": len(with_hold),
                "p50_ms_with_hold": round(p50_with, 2),
                "p50_ms_without_hold": round(p50_without, 2),
                "ratio": round(p50_with / p50_without, 3),
            }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.seats_bench")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    rounds, n = (2, 40) if args.quick else (5, 100)
    database = create_database("onramp_bench_seats")
    port, sandbox_port = free_port(), free_port()
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        app_env="test",
        port=port,
        public_base_url=f"http://127.0.0.1:{port}",
        database_url=sqlalchemy_url(database),
        temporal_address=f"127.0.0.1:{free_port()}",  # checkout creation needs no Temporal
        stripe_api_base=f"http://127.0.0.1:{sandbox_port}",
        log_level="WARNING",
    )
    assert checkout_module.cohorts is cohorts  # the stand-ins replace what checkout calls
    try:
        migrate(settings.database_url)
        sandbox = create_sandbox(
            webhook_url=f"{settings.public_base_url}{WEBHOOK_PATH}",
            webhook_secret=settings.stripe_webhook_secret,
            public_url=f"http://127.0.0.1:{sandbox_port}",
        )
        with (
            BackgroundServer(sandbox, port=sandbox_port),
            BackgroundServer(create_app(settings), port=port, proxy_headers=False) as api,
        ):
            figures = asyncio.run(measure(api.url, rounds, n))
    finally:
        drop_database(database)
    report = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "target_ratio": TARGET_RATIO,
        **figures,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"{'checkout creation (one cohort)':<34} {'with hold':>10} {'without':>10} {'ratio':>7}")
    missed = False
    for name, f in figures.items():
        ok = f["ratio"] <= TARGET_RATIO
        missed |= not ok
        with_ms, without_ms = f["p50_ms_with_hold"], f["p50_ms_without_hold"]
        print(
            f"{name.replace('_', ' '):<34} {with_ms:>8} ms {without_ms:>7} ms"
            f" {f['ratio']:>6}x  {'ok' if ok else 'MISSED'} (<= {TARGET_RATIO}x)"
        )
    print(f"results: {RESULTS}")
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
