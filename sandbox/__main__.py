"""Command line: `python -m sandbox` serves the Stripe sandbox until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType

import uvicorn

from core.urls import WEBHOOK_PATH
from sandbox.app import DEFAULT_API_KEY, create_app

DEFAULT_PORT = 12111
DEFAULT_WEBHOOK_URL = f"http://127.0.0.1:8000{WEBHOOK_PATH}"
# Same development secret as core.settings.DEV_WEBHOOK_SECRET, so the app verifies out of the box.
DEV_WEBHOOK_SECRET = "whsec_dev_sandbox_secret"

logger = logging.getLogger("sandbox")


def _exit_cleanly(signum: int, _frame: FrameType | None) -> None:
    # uvicorn re-raises the signal once it has shut down gracefully; end with status 0.
    logger.info("stripe sandbox stopped")
    raise SystemExit(0)


def main() -> None:
    log_level = os.environ.get("SANDBOX_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    port = int(os.environ.get("SANDBOX_PORT", str(DEFAULT_PORT)))
    host = os.environ.get("SANDBOX_HOST", "127.0.0.1")
    secret = os.environ.get("STRIPE_WEBHOOK_SECRET") or DEV_WEBHOOK_SECRET
    if secret == DEV_WEBHOOK_SECRET:
        logger.warning("STRIPE_WEBHOOK_SECRET unset: signing webhooks with the development secret")
    # An empty SANDBOX_WEBHOOK_URL turns delivery off (events are still recorded).
    webhook_url = os.environ.get("SANDBOX_WEBHOOK_URL", DEFAULT_WEBHOOK_URL) or None
    public_url = os.environ.get("SANDBOX_PUBLIC_URL") or f"http://127.0.0.1:{port}"
    app = create_app(
        webhook_url=webhook_url,
        webhook_secret=secret,
        public_url=public_url,
        api_key=os.environ.get("SANDBOX_API_KEY") or DEFAULT_API_KEY,
        fixtures_path=os.environ.get("STRIPE_FIXTURES_PATH") or None,
    )
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), timeout_graceful_shutdown=5)
    logger.info("stripe sandbox stopped")


if __name__ == "__main__":
    main()
