"""`onramp-support`: the support desk's command line. Same actions and rules as the staff
API (`support/service.py`), talking to the database and Temporal from settings (.env).

Every action is written to the audit log with `--actor` (default `staff:$USER`).
"""

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import OperationalError

from core.cohorts.service import CohortChange
from core.db import make_engine
from core.errors import AppError
from core.logging import configure_logging
from core.payments.stripe_gateway import StripeGateway
from core.settings import get_settings
from core.temporal import connect
from support import cohorts as support_cohorts
from support.funnel import compute_funnel
from support.service import ListFilters, SupportService, parse_since

PASSWORD_ENV = "ONRAMP_STAFF_PASSWORD"
EXIT_ERROR = 1
EXIT_UNAVAILABLE = 3


def default_actor() -> str:
    user = os.environ.get("USER") or os.environ.get("USERNAME")
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
    return f"staff:{user}"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--actor", default=default_actor(), help="who acts, for the audit log (staff:$USER)"
    )
    common.add_argument("--json", action="store_true", help="print JSON")
    common.add_argument("-v", "--verbose", action="store_true", help="log to stderr")

    parser = argparse.ArgumentParser(
        prog="onramp-support",
        description="Operate Onramp enrollments: find, inspect, decide, replay, revoke, grant.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, parents=[common])

    p = command("list", "List enrollments, newest first")
    p.add_argument("--status", help="e.g. NEEDS_ATTENTION, READY, DUPLICATE, REVOKED")
    p.add_argument("--email")
    p.add_argument("--track", help="DP or FSD")
    p.add_argument("--needs-attention", action="store_true", help="only those waiting for us")
    p.add_argument("--since", help="created on or after DATE (YYYY-MM-DD or ISO timestamp)")
    p.add_argument("--limit", type=int, default=100)

    p = command("show", "Timeline, tools, workflow history and current state of one enrollment")
    p.add_argument("session_id", metavar="SESSION_ID")

    for name, what in (
        ("retry", "Retry a tool or step that ran out of retries"),
        ("skip", "Skip a tool that ran out of retries"),
    ):
        p = command(name, what)
        p.add_argument("session_id", metavar="SESSION_ID")
        p.add_argument("tool", metavar="TOOL_OR_STEP")
        p.add_argument("--reason", required=True)

    p = command("cancel", "Cancel a running enrollment (refunds unless --no-refund)")
    p.add_argument("session_id", metavar="SESSION_ID")
    p.add_argument("--reason", required=True)
    p.add_argument("--no-refund", action="store_true")

    p = command("replay", "Run the enrollment again from the start (activities are idempotent)")
    p.add_argument("session_id", metavar="SESSION_ID")
    p.add_argument("--reason", required=True)

    p = command("resend-welcome", "Send the welcome email again (a fresh set-password link)")
    p.add_argument("session_id", metavar="SESSION_ID")

    p = command("revoke", "Refund through Stripe, then withdraw access")
    p.add_argument("session_id", metavar="SESSION_ID")
    p.add_argument("--reason", required=True)

    p = command("grant", "Enroll someone without payment")
    p.add_argument("--email", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--track", required=True, help="DP or FSD")
    p.add_argument("--reason", required=True)

    p = command("create-staff", f"Create a staff account (password from ${PASSWORD_ENV} or prompt)")
    p.add_argument("--email", required=True)
    p.add_argument("--name", required=True)

    p = command("reconcile", "Run one reconciliation with Stripe now and print what it found")
    p.add_argument("--lookback-hours", type=float)

    p = command(
        "drift",
        "Compare what each tool holds with the ledger now: repair what is safe, report the rest",
    )
    p.set_defaults(dry_run=False)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--repair", dest="dry_run", action="store_false", help="repair (the default)")
    mode.add_argument(
        "--dry-run", dest="dry_run", action="store_true", help="only show what would be done"
    )

    p = command("funnel", "Checkout -> paid -> enrolled -> first login, and provisioning times")
    p.add_argument("--days", type=int)

    p = command("cohort", "Cohorts: list, create, edit, settle the seats now")
    cohort = p.add_subparsers(dest="cohort_command", required=True, metavar="ACTION")
    c = cohort.add_parser("list", help="Cohorts with seats held, taken, left and waiting",
                          parents=[common])  # fmt: skip
    c.add_argument("--track", help="DP or FSD")
    for name, what in (("create", "Create a cohort"), ("edit", "Edit a cohort")):
        c = cohort.add_parser(name, help=what, description=what, parents=[common])
        c.add_argument("code", metavar="CODE", help="e.g. DP-2027-03")
        required = name == "create"
        if required:
            c.add_argument("--track", required=True, help="DP or FSD")
        c.add_argument("--starts", required=required, help="start date (YYYY-MM-DD or ISO)")
        c.add_argument("--size", type=int, required=required, help="seats")
        c.add_argument("--opens", help="sales open (default: now)")
        c.add_argument("--closes", help="sales close (default: never, until closed)")
        c.add_argument("--state", help="draft, on_sale, closed, running")
        if not required:
            c.add_argument("--no-close", action="store_true", help="remove the closing date")
    cohort.add_parser(
        "settle", help="Release expired holds and offers, offer free seats now", parents=[common]
    )
    return parser


def _cohort(args: argparse.Namespace, engine: Any, settings: Any) -> Any:
    match args.cohort_command:
        case "list":
            return support_cohorts.list_cohorts(engine, args.track)
        case "settle":
            return support_cohorts.settle_now(engine, settings)
    change = CohortChange(
        code=args.code,
        track=getattr(args, "track", None),
        starts_at=support_cohorts.parse_when(args.starts, "--starts"),
        size=args.size,
        sales_open_at=support_cohorts.parse_when(args.opens, "--opens"),
        sales_close_at=support_cohorts.parse_when(args.closes, "--closes"),
        clear_sales_close=getattr(args, "no_close", False),
        state=args.state,
    )
    if args.cohort_command == "create":
        return support_cohorts.create_cohort(engine, change, args.actor)
    return support_cohorts.edit_cohort(engine, args.code, change, args.actor)


def _password() -> str:
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env:
        return from_env
    first = getpass.getpass("Password for the staff account: ")
    if getpass.getpass("Again: ") != first:
        raise AppError("The passwords differ.", error="Password mismatch")
    return first


async def run(args: argparse.Namespace) -> Any:
    settings = get_settings()
    try:
        # The app's own start-up check: without .env, production would quietly mean SQLite.
        settings.check_production()
    except RuntimeError as err:
        raise AppError(str(err), error="Configuration") from None
    engine = make_engine(settings.database_url)
    try:
        if args.command in ("create-staff", "cohort"):
            client = None
        else:
            # Lazy: a command that only reads the database works while Temporal is down.
            client = await connect(settings, lazy=True)
        support = SupportService(settings, engine, client, StripeGateway(settings))  # type: ignore[arg-type]
        actor = args.actor
        match args.command:
            case "list":
                filters = ListFilters(
                    status=args.status,
                    email=args.email,
                    track=args.track,
                    needs_attention=True if args.needs_attention else None,
                    since=parse_since(args.since),
                    limit=args.limit,
                )
                return await support.list_enrollments(filters)
            case "show":
                return await support.show(args.session_id)
            case "retry":
                return await support.retry(args.session_id, args.tool, args.reason, actor)
            case "skip":
                return await support.skip(args.session_id, args.tool, args.reason, actor)
            case "cancel":
                return await support.cancel(
                    args.session_id, args.reason, actor, refund=not args.no_refund
                )
            case "replay":
                return await support.replay(args.session_id, args.reason, actor)
            case "resend-welcome":
                return await support.resend_welcome(args.session_id, actor)
            case "revoke":
                return await support.revoke(args.session_id, args.reason, actor)
            case "grant":
                return await support.grant(args.email, args.name, args.track, args.reason, actor)
            case "create-staff":
                password = _password()
                return await asyncio.to_thread(
                    support.create_staff, args.email, args.name, password, actor
                )
            case "reconcile":
                return await support.reconcile(actor, args.lookback_hours)
            case "drift":
                return await support.drift(actor, dry_run=args.dry_run)
            case "funnel":
                return await asyncio.to_thread(
                    compute_funnel, engine, args.days or settings.funnel_days
                )
            case "cohort":
                return await asyncio.to_thread(_cohort, args, engine, settings)
        raise AppError(f"unknown command {args.command}")
    finally:
        engine.dispose()


# ---- output ----------------------------------------------------------------------------


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[str(r.get(c) if r.get(c) is not None else "") for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def render(command: str, result: Any) -> str:
    if command == "list":
        if not result:
            return "no enrollments match"
        return _table(
            result,
            ("checkout_session_id", "email", "track", "status", "attention_reason", "created_at"),
        )
    if command == "show":
        return _render_show(result)
    if command == "cohort" and isinstance(result, list):
        if not result:
            return "no cohorts"
        return _table(
            result,
            ("code", "track", "starts_at", "state", "size", "taken", "held", "seats_left",
             "waiting", "ledger_consistent"),
        )  # fmt: skip
    if command == "drift":
        return _render_drift(result)
    if isinstance(result, dict):
        return "\n".join(f"{k}: {json.dumps(v, default=str)}" for k, v in result.items())
    return json.dumps(result, indent=2, default=str)


def _render_show(view: dict[str, Any]) -> str:
    out: list[str] = []
    e = view.get("enrollment")
    if e:
        out.append(f"{e['checkout_session_id']}  {e['email']}  {e['track']}  **{e['status']}**")
        if e["needs_attention"]:
            out.append(f"NEEDS ATTENTION: {e['attention_reason']}")
        out.append(f"paid {e['paid_at']}  amount {e['amount']} {e['currency'] or ''}")
    user = view.get("user")
    if user:
        out.append(
            f"user #{user['id']} {user['username']} active={user['is_active']} "
            f"password_set={user['has_password']}"
        )
    if view.get("tools"):
        out += ["", "TOOLS", _table(view["tools"], ("tool", "status", "url", "error"))]
    if view.get("refunds"):
        out += ["", "REFUNDS"]
        out += [f"{r['at']}  {r['action']}  {json.dumps(r['details'])}" for r in view["refunds"]]
    out += ["", "TIMELINE (audit log)"]
    for t in view.get("timeline", []):
        out.append(f"{t['at']}  {t['actor']:<24} {t['action']:<22} {json.dumps(t['details'])}")
    wf = view.get("workflow")
    out += ["", "WORKFLOW"]
    if wf is None:
        out.append("no workflow")
    elif "error" in wf:
        out.append(f"unavailable: {wf['error']}")
    else:
        out.append(f"{wf['workflow_id']} run {wf['run_id']}  {wf['status']}  {wf['ui_url']}")
        state = wf.get("state") or {}
        progress = state.get("progress") or {}
        for step in progress.get("steps", []):
            detail = f": {step['detail']}" if step.get("detail") else ""
            out.append(f"  [{step['status']:>7}] {step['label']}{detail}")
        out.append("  history:")
        out += [f"  {h['at']}  {h['event']}  {h.get('detail') or ''}" for h in wf["history"]]
    if view.get("related_workflows"):
        out += [
            "",
            "RELATED WORKFLOWS",
            _table(view["related_workflows"], ("workflow_id", "type", "status")),
        ]
    return "\n".join(out)


def _render_drift(result: dict[str, Any]) -> str:
    out = [
        f"{'dry run: ' if result['dry_run'] else ''}{result['repaired']} repaired, "
        f"{result['reported']} reported, {result['deferred']} deferred"
    ]
    for tool in result["tools"]:
        if not tool["listed"]:
            out.append(f"{tool['tool']}: NOT LISTED ({tool['error']}); nothing changed")
            continue
        out.append(f"{tool['tool']}: {tool['held']} held, {tool['entitled']} ready in the ledger")
    items = [item for tool in result["tools"] for item in tool["items"]]
    if items:
        out += ["", _table(items, ("tool", "username", "problem", "action", "detail"))]
    return "\n".join(out)


def run_cli(argv: Sequence[str] | None = None) -> int:
    """The whole command; returns the exit code (usable in-process)."""
    args = build_parser().parse_args(argv)
    configure_logging("INFO" if args.verbose else "WARNING")
    try:
        result = asyncio.run(run(args))
    except AppError as err:
        print(f"error: {err.error}: {err.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE if err.status_code == 503 else EXIT_ERROR
    except OperationalError as err:
        print(f"error: database unavailable or not migrated: {err.orig}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(render(args.command, result))
    return 0


def main() -> None:
    """Console script `onramp-support`."""
    code = run_cli()
    # The Temporal SDK's runtime threads can abort a normal interpreter exit
    # (sdk-python#300): flush and leave without running finalizers.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
