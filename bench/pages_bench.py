"""Student pages: bytes transferred on first load (50 KB budget) and Lighthouse scores.

    python -m bench.pages_bench [--strict] [--no-lighthouse]

Serves the real app on a throwaway PostgreSQL database with one enrolled student, loads
every page once in Chromium with an empty cache and counts what crossed the wire (HTML,
CSS, JS, icon), then runs Lighthouse 12.2.3 (bench/node_modules; `npm ci` in bench/) on
`/`, `/get-started` and `/student/dashboard` (logged in through a Cookie header).
Targets: every page under 50 KB; Lighthouse performance >= 95 and accessibility 100.
Writes bench/results/pages.json.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlmodel import Session

from api.main import create_app
from core.accounts.security import issue_tokens
from core.contracts import EnrollmentStatus
from core.crypto import SecretBox
from core.models import Enrollment, ProjectUnlock, ToolAccountRecord, User, utcnow
from core.repository import get_first_project
from core.settings import Settings
from core.tracks import TRACKS
from sandbox.server import BackgroundServer
from tests.utils.helpers import create_database, drop_database, free_port, migrate, sqlalchemy_url

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "pages.json"
LIGHTHOUSE = ROOT / "bench" / "node_modules" / ".bin" / "lighthouse"
CHROMIUM = Path(os.environ.get("CHROME_PATH", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BUDGET_BYTES = 50 * 1024
TARGET_PERFORMANCE = 95
TARGET_ACCESSIBILITY = 100
PAGES = {
    "/": False,
    "/get-started": False,
    "/payment/success?session_id=cs_test_benchmark000000000": False,
    "/payment/cancel": False,
    "/login": False,
    "/forgot-password": False,
    "/set-password?token=" + "t" * 43: False,
    "/student/dashboard": True,  # needs the student's cookie
}
LIGHTHOUSE_PAGES = ["/", "/get-started", "/student/dashboard"]
LIGHTHOUSE_RUNS = 3


def seed_student(settings: Settings) -> str:
    """One student with a ready DP enrollment, tools and Project 1; returns the access token."""
    from core.db import make_engine

    engine = make_engine(settings.database_url)
    box = SecretBox(settings.tool_secret_key)
    track = TRACKS["DP"]
    try:
        with Session(engine) as s:
            user = User(
                email="bench@example.com",
                username="bench",
                name="Ada Lovelace",
                track="DP",
                enrollment_status=EnrollmentStatus.READY,
                payment_verified=True,
            )
            s.add(user)
            s.flush()
            assert user.id is not None
            enrollment = Enrollment(
                checkout_session_id="cs_test_benchmark000000000",
                workflow_id="enrollment-cs_test_benchmark000000000",
                email=user.email,
                name=user.name,
                track="DP",
                status=EnrollmentStatus.READY,
                user_id=user.id,
                account_created=True,
                payment_verified=True,
                completed_at=utcnow() - timedelta(minutes=1),
            )
            s.add(enrollment)
            s.flush()
            for tool in track.tools:
                s.add(
                    ToolAccountRecord(
                        user_id=user.id,
                        enrollment_id=enrollment.id,
                        tool=tool,
                        status="ready",
                        url=f"{settings.public_base_url}/dev-tools/{tool}/bench",
                        username="bench",
                        secret_encrypted=box.encrypt("bench-secret-0123456789"),
                        development=True,
                        details={"note": "development stand-in"},
                    )
                )
            project = get_first_project(s, "DP")
            assert project is not None and project.id is not None
            s.add(ProjectUnlock(user_id=user.id, project_id=project.id))
            tokens = issue_tokens(s, settings, user)
            s.commit()
            return tokens.access
    finally:
        engine.dispose()


async def transferred_bytes(base_url: str, access: str) -> dict[str, dict[str, Any]]:
    """Each page loaded once in a fresh context (empty cache): bytes on the wire by kind."""
    from playwright.async_api import Response, async_playwright

    results: dict[str, dict[str, Any]] = {}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        for path, needs_login in PAGES.items():
            context = await browser.new_context(base_url=base_url)
            if needs_login:
                await context.add_cookies(
                    [{"name": "onramp_access", "value": access, "url": base_url}]
                )
            page = await context.new_page()
            responses: list[Response] = []

            def record(response: Response, into: list[Response] = responses) -> None:
                into.append(response)

            page.on("response", record)
            await page.goto(path, wait_until="networkidle")
            by_kind: dict[str, int] = defaultdict(int)
            for response in responses:
                sizes = await response.request.sizes()
                size = sizes["responseBodySize"] + sizes["responseHeadersSize"]
                kind = response.request.resource_type
                by_kind[
                    {"document": "html", "stylesheet": "css", "script": "js"}.get(kind, kind)
                ] += size
            total = sum(by_kind.values())
            results[path] = {
                "bytes": dict(by_kind),
                "total_bytes": total,
                "requests": len(responses),
                "within_budget": total < BUDGET_BYTES,
                "final_url": page.url.removeprefix(base_url),
            }
            await context.close()
        await browser.close()
    return results


def lighthouse_median(url: str, access: str | None) -> dict[str, Any]:
    """Lighthouse varies run to run on a shared 2-core box: the median of three good runs
    (by performance score), as Lighthouse's own docs advise; a failed run is retried."""
    runs: list[dict[str, Any]] = []
    errors: list[str] = []
    while len(runs) < LIGHTHOUSE_RUNS and len(errors) < LIGHTHOUSE_RUNS:
        result = lighthouse(url, access)
        if "error" in result:
            errors.append(result["error"])
        else:
            runs.append(result)
    if not runs:
        return {"error": errors[-1]}
    runs.sort(key=lambda r: r["performance"])
    median = dict(runs[len(runs) // 2])
    median["runs_performance"] = [r["performance"] for r in runs]
    median["runs_accessibility"] = [r["accessibility"] for r in runs]
    median["failed_runs"] = len(errors)
    return median


def lighthouse(url: str, access: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [
            str(LIGHTHOUSE),
            url,
            "--quiet",
            "--output=json",
            f"--output-path={report}",
            "--only-categories=performance,accessibility",
            "--chrome-flags=" + " ".join(CHROMIUM_FLAGS),
        ]
        if access:
            command.append("--extra-headers=" + json.dumps({"Cookie": f"onramp_access={access}"}))
        started = time.monotonic()
        done = subprocess.run(
            command,
            env={**os.environ, "CHROME_PATH": str(CHROMIUM)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode or not report.exists():
            return {"error": (done.stderr or done.stdout)[-2000:]}
        data = json.loads(report.read_text())
    audits = data["audits"]
    failing = [
        a["id"]
        for a in audits.values()
        if a.get("scoreDisplayMode") == "binary" and a.get("score") == 0
    ]
    return {
        "performance": round(data["categories"]["performance"]["score"] * 100),
        "accessibility": round(data["categories"]["accessibility"]["score"] * 100),
        "first_contentful_paint_ms": round(audits["first-contentful-paint"]["numericValue"]),
        "largest_contentful_paint_ms": round(audits["largest-contentful-paint"]["numericValue"]),
        "total_blocking_time_ms": round(audits["total-blocking-time"]["numericValue"]),
        "cumulative_layout_shift": audits["cumulative-layout-shift"]["numericValue"],
        "final_url": data.get("finalDisplayedUrl", ""),
        "failing_binary_audits": failing,
        "seconds": round(time.monotonic() - started, 1),
    }


def print_table(report: dict[str, Any]) -> None:
    print(f"{'page':<58} {'html':>6} {'css':>6} {'js':>6} {'other':>6} {'total':>7}  budget")
    for path, r in report["transfer"].items():
        b = r["bytes"]
        other = r["total_bytes"] - b.get("html", 0) - b.get("css", 0) - b.get("js", 0)
        mark = "ok" if r["within_budget"] else "OVER"
        print(
            f"{path[:58]:<58} {b.get('html', 0):>6} {b.get('css', 0):>6} {b.get('js', 0):>6} "
            f"{other:>6} {r['total_bytes']:>7}  {mark} (< {BUDGET_BYTES})"
        )
    if report.get("lighthouse"):
        print(
            f"\n{'Lighthouse 12.2.3 (mobile)':<30} {'performance':>12} {'accessibility':>14}"
            f"   targets: >= {TARGET_PERFORMANCE}, {TARGET_ACCESSIBILITY}"
        )
        for path, r in report["lighthouse"].items():
            if "error" in r:
                print(f"{path:<30} error: {r['error'][-300:]}")
            else:
                print(f"{path:<30} {r['performance']:>12} {r['accessibility']:>14}")


def missed(report: dict[str, Any]) -> list[str]:
    problems = [p for p, r in report["transfer"].items() if not r["within_budget"]]
    for path, r in report.get("lighthouse", {}).items():
        if "error" in r:
            problems.append(f"lighthouse {path}: error")
        elif r["performance"] < TARGET_PERFORMANCE or r["accessibility"] < TARGET_ACCESSIBILITY:
            problems.append(f"lighthouse {path}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pages_bench")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--no-lighthouse", action="store_true", help="bytes only")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        print(f"pages bench skipped: no Chromium at {CHROMIUM} (apt-get install chromium)")
        return 0
    run_lighthouse = not args.no_lighthouse
    if run_lighthouse and not LIGHTHOUSE.exists():
        print(f"lighthouse not installed at {LIGHTHOUSE}: run `npm ci` in bench/; bytes only")
        run_lighthouse = False

    database = create_database("onramp_bench_pages")
    port = free_port()
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        app_env="test",
        port=port,
        public_base_url=f"http://127.0.0.1:{port}",
        database_url=sqlalchemy_url(database),
        temporal_address=f"127.0.0.1:{free_port()}",  # pages of a READY student need none
        log_level="WARNING",
    )
    try:
        migrate(settings.database_url)
        access = seed_student(settings)
        with BackgroundServer(create_app(settings), port=port) as server:
            report: dict[str, Any] = {
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "budget_bytes": BUDGET_BYTES,
                "targets": {
                    "performance": TARGET_PERFORMANCE,
                    "accessibility": TARGET_ACCESSIBILITY,
                },
                "transfer": asyncio.run(transferred_bytes(server.url, access)),
            }
            if run_lighthouse:
                report["lighthouse"] = {
                    path: lighthouse_median(
                        f"{server.url}{path}", access if PAGES.get(path) else None
                    )
                    for path in LIGHTHOUSE_PAGES
                }
    finally:
        drop_database(database)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    problems = missed(report)
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}; targets missed: {problems or 'none'}")
    return 1 if (args.strict and problems) else 0


if __name__ == "__main__":
    sys.exit(main())
