"""Benchmark: how long one provision takes per tool, against real local servers.

Starts what it measures (a throwaway learning database on 127.0.0.1:5432, Superset,
Prefect, Podman with the tiny test workspace image), provisions a fresh student N times per
tool, drops each student afterwards (untimed), and reports p50/p95 as a table and as JSON in
bench/results/tools.json. Usage: `python bench/tools_bench.py [--runs 20] [--tools a,b]`.
"""

import argparse
import json
import logging
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import docker
import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts" / "tools"))

import tool_servers  # noqa: E402

from core.tools.base import ToolAdapter, ToolSubject  # noqa: E402
from core.tools.development import DevelopmentToolAdapter  # noqa: E402
from core.tools.postgres_schema import PostgresSchemaAdapter  # noqa: E402
from core.tools.prefect import PrefectAdapter  # noqa: E402
from core.tools.superset import SupersetAdapter  # noqa: E402
from core.tools.workspace import DockerWorkspaceAdapter, WorkspaceSpec  # noqa: E402

logger = logging.getLogger("tools_bench")

ADMIN_DSN = os.environ.get("ONRAMP_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432")
RUN_ID = secrets.token_hex(3)  # in every username, so leftovers can be found and dropped
TOOLS = ("development", "postgres", "superset", "superset+schema", "prefect", "workspace")
BUSYBOX_SPEC = WorkspaceSpec(
    internal_port=tool_servers.TEST_IMAGE_PORT,
    health_path="/index.html",
    token_env="WORKSPACE_TOKEN",
    volume_path="/data",
    command=("/bin/busybox", "httpd", "-f", "-p", "{port}", "-h", "/www"),
)
NOTES = {
    "development": "in-process stand-in, latency_ms=0 (the floor)",
    "postgres": "role + schema on PostgreSQL 127.0.0.1:5432",
    "superset": "Gamma user via REST (login + look-ups + create)",
    "superset+schema": "user + database connection + own role (includes a postgres companion)",
    "prefect": "process work pool via REST",
    "workspace": "Podman container (busybox test image) until its HTTP probe answers",
}


@contextmanager
def learning_database() -> Iterator[str]:
    name = f"onramp_tools_bench_{secrets.token_hex(3)}"
    with psycopg.connect(f"{ADMIN_DSN}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{ADMIN_DSN}/{name}"
    finally:
        with psycopg.connect(f"{ADMIN_DSN}/postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            # Roles are cluster-wide: drop this run's (companions first: longer names).
            roles = conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE %s ORDER BY length(rolname) DESC",
                (f"student\\_b{RUN_ID}\\_%",),
            ).fetchall()
            for (role,) in roles:
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def subjects(prefix: str) -> Iterator[ToolSubject]:
    n = 0
    while True:
        n += 1
        username = f"b{RUN_ID}_{prefix}{n}"
        yield ToolSubject(n, username, f"{username}@bench.onramp.test", "Bench Student", f"cs_{n}")


def measure(adapter: ToolAdapter, runs: int, prefix: str) -> list[float]:
    made = subjects(prefix)
    warm_up = next(made)
    adapter.provision(warm_up)  # first connection, one-time hardening: not timed
    adapter.deprovision(warm_up, drop=True)
    timings = []
    for _ in range(runs):
        subject = next(made)
        started = time.perf_counter()
        adapter.provision(subject)
        timings.append((time.perf_counter() - started) * 1000)
        adapter.deprovision(subject, drop=True)
    return timings


def summary(timings: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(timings, n=20, method="inclusive")
    return {
        "p50_ms": round(statistics.median(timings), 1),
        "p95_ms": round(cuts[18], 1),
        "mean_ms": round(statistics.fmean(timings), 1),
        "min_ms": round(min(timings), 1),
        "max_ms": round(max(timings), 1),
        "runs": len(timings),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "tools.json")
    args = parser.parse_args()
    wanted = [t for t in args.tools.split(",") if t]

    results: dict[str, dict[str, object]] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="onramp-bench-") as tmp:
        work = Path(tmp)
        learning = stack.enter_context(learning_database())
        postgres = PostgresSchemaAdapter(learning, 5, 30_000)
        factories: dict[str, Callable[[], ToolAdapter]] = {
            "development": lambda: DevelopmentToolAdapter("prefect"),
            "postgres": lambda: postgres,
        }
        if {"superset", "superset+schema"} & set(wanted):
            superset = tool_servers.start_superset(work / "superset")
            stack.callback(superset.stop)
            factories["superset"] = lambda: SupersetAdapter(
                superset.url, superset.admin_username, superset.admin_password
            )
            factories["superset+schema"] = lambda: SupersetAdapter(
                superset.url,
                superset.admin_username,
                superset.admin_password,
                learning_dsn_for=postgres.superset_dsn,
            )
        if "prefect" in wanted:
            prefect = tool_servers.start_prefect(work / "prefect")
            stack.callback(prefect.stop)
            factories["prefect"] = lambda: PrefectAdapter(
                prefect.url, auth_string=prefect.auth_string
            )
        if "workspace" in wanted:
            socket_url = tool_servers.ensure_podman()
            image = tool_servers.ensure_test_image()
            factories["workspace"] = lambda: DockerWorkspaceAdapter(
                "jupyter",
                lambda: docker.DockerClient(base_url=socket_url),
                image,
                spec=BUSYBOX_SPEC,
                memory="64m",
                cpus=0.5,
                pids_limit=64,
                probe_interval_s=0.05,
                stop_timeout_s=1,
            )
        for tool in wanted:
            logger.info("measuring %s (%d runs)", tool, args.runs)
            timings = measure(factories[tool](), args.runs, tool.replace("+", "_"))
            results[tool] = {**summary(timings), "what": NOTES[tool]}

    report = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "runs_per_tool": args.runs,
        "tools": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    header = f"{'tool':<16} {'p50 ms':>9} {'p95 ms':>9} {'mean ms':>9} {'max ms':>9}  what"
    lines = [header, "-" * len(header)]
    for tool, r in results.items():
        lines.append(
            f"{tool:<16} {r['p50_ms']:>9} {r['p95_ms']:>9} {r['mean_ms']:>9} {r['max_ms']:>9}"
            f"  {r['what']}"
        )
    sys.stdout.write("\n".join(lines) + f"\n\nwritten to {args.output}\n")


if __name__ == "__main__":
    main()
