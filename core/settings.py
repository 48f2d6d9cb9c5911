"""All configuration, read from the environment once at startup (never at import time)."""

import ipaddress
import math
import string
from functools import lru_cache
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.tracks import (
    ALL_TOOLS,
    TOOL_CODESERVER,
    TOOL_JUPYTER,
    TOOL_POSTGRES,
    TOOL_PREFECT,
    TOOL_SUPERSET,
)

DEV_JWT_SECRET = "dev-only-jwt-secret-change-me-0123456789abcdef"
DEV_TOOL_SECRET_KEY = "ZGV2LW9ubHktdG9vbC1rZXktY2hhbmdlLW1lLTEyMzQ="  # Fernet key, dev only
DEV_WEBHOOK_SECRET = "whsec_dev_sandbox_secret"
SANDBOX_API_KEY = "sk_test_sandbox"
# Published with the code: never a production secret, whatever it is used for.
PUBLISHED_SECRETS = frozenset(
    {DEV_JWT_SECRET, DEV_TOOL_SECRET_KEY, DEV_WEBHOOK_SECRET, SANDBOX_API_KEY}
)
MIN_SECRET_BITS = 256  # JWT signing keys: at least 32 random bytes
# The port of `make dev`'s mail catcher (and of Mailpit's and MailHog's): keeps every message.
MAIL_CATCHER_SMTP_PORT = 1025
STRIPE_TEST_KEY_PREFIXES = ("sk_test_", "rk_test_", "pk_test_")
_HEX = frozenset(string.hexdigits)
_BASE64 = frozenset(string.ascii_letters + string.digits + "+/-_=")


def secret_bits(secret: str) -> float:
    """A generous estimate of how random a secret is: its length times the bits per character
    of the smallest usual alphabet it is written in (hex, base64, printable ASCII). A value
    of few distinct characters, or one short pattern repeated, counts as not random at all."""
    chars = set(secret)
    if len(chars) < 10 or secret in (secret + secret)[1:-1]:
        return 0.0
    if chars <= _HEX:
        per_char = 4.0
    elif chars <= _BASE64:
        per_char = 6.0
    else:
        per_char = math.log2(95)
    return len(secret) * per_char


def parse_previous_keys(spec: str) -> dict[str, str]:
    """JWT_PREVIOUS_KEYS ("kid:secret,kid:secret") as kid -> secret; malformed items dropped
    (production refuses to start with any, see `Settings.check_production`)."""
    keys: dict[str, str] = {}
    for item in spec.split(","):
        kid, sep, secret = item.strip().partition(":")
        if sep and kid.strip() and secret.strip():
            keys[kid.strip()] = secret.strip()
    return keys


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Production unless told otherwise: `make dev` sets development, the tests set test.
    app_env: Literal["development", "test", "production"] = "production"
    log_level: str = "INFO"

    # Where the app and its pages are reached; redirects may only go to these origins.
    port: int = 8000
    public_base_url: str = ""  # default: http://localhost:{port}
    allowed_redirect_origins: str = ""  # comma-separated; the app's own origin always counts

    database_url: str = "sqlite:///./onramp.db"

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_task_queue: str = "enrollment"
    temporal_ui_url: str = "http://127.0.0.1:8233"

    # Stripe. Without a secret key the app talks to the offline sandbox.
    stripe_secret_key: str = ""
    stripe_publishable_key: str = ""
    stripe_webhook_secret: str = DEV_WEBHOOK_SECRET
    stripe_api_base: str = ""  # e.g. http://127.0.0.1:12111 for the sandbox
    sandbox_port: int = 12111
    # Staging only: production accepts Stripe test-mode keys, cs_test_ sessions and
    # livemode=false events. Everywhere else test mode is always accepted.
    allow_stripe_test_mode: bool = False

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    smtp_from: str = "Onramp <welcome@onramp.local>"
    support_email: str = "support@onramp.local"
    mailcatcher_port: int = 1080

    jwt_secret: str = DEV_JWT_SECRET
    jwt_key_id: str = "k1"
    access_token_minutes: int = 15
    refresh_token_days: int = 14
    auto_login_window_minutes: int = 30
    set_password_token_hours: int = 72

    # Tools. A tool whose server is not configured uses its development adapter.
    tool_secret_key: str = DEV_TOOL_SECRET_KEY  # Fernet key encrypting tool secrets at rest
    tool_dev_latency_ms: int = 0  # development adapters sleep this long (benchmarks)
    tool_retry_minutes: float = 10.0  # how long one tool is retried before support is asked
    step_budget_minutes: float = 10.0  # the same for every other step of an enrollment
    # How long an enrollment's workflow stays open once it landed or ended, the one owner of
    # its refunds, disputes and support's actions (Stripe's dispute window: 120 days). 0
    # closes it at once: a later event starts a run that reads the ledger (signal-with-start).
    enrollment_owner_days: float = 120.0
    learning_database_url: str = ""  # postgresql://... for student schemas
    student_connection_limit: int = 5
    student_statement_timeout_ms: int = 30_000
    superset_url: str = ""
    superset_admin_username: str = "admin"
    superset_admin_password: str = ""
    superset_student_role: str = "Gamma"
    prefect_api_url: str = ""  # e.g. http://127.0.0.1:4200/api
    # "user:password", the server's PREFECT_SERVER_API_AUTH_STRING (sent as HTTP Basic auth).
    prefect_api_auth_string: str = ""
    docker_host: str = ""  # e.g. unix:///run/podman/podman.sock; empty = dev adapters
    workspace_host: str = "127.0.0.1"
    jupyter_image: str = "quay.io/jupyter/base-notebook:latest"
    codeserver_image: str = "codercom/code-server:latest"
    workspace_memory: str = "1g"
    workspace_cpus: float = 1.0
    workspace_pids_limit: int = 256
    workspace_network: str = ""  # empty: published ports on workspace_host
    workspace_health_timeout_s: float = 120.0
    # docker: a container per student (production). process: a local server process per
    # student (make dev; no isolation, refused in production).
    workspace_backend: Literal["docker", "process"] = "docker"
    workspace_root: str = ".run/workspaces"  # process: one folder per student and tool
    workspace_port_min: int = 20000  # process: the loopback ports handed out
    workspace_port_max: int = 20999
    workspace_idle_timeout_minutes: float = 60.0  # process: stop idle servers; 0 never
    jupyter_bin: str = ""  # process; empty: what scripts/tools/ensure-jupyter.sh installs
    codeserver_bin: str = ""  # process; empty: what scripts/tools/ensure-codeserver.sh installs
    # `make dev` only: real tool servers on this machine (devstack/tools.py).
    dev_real_tools: bool = True  # false: every tool on its development stand-in
    dev_superset: bool = False  # Superset is an 800 MB install: on only when asked
    dev_learning_postgres_port: int = 15432  # the embedded learning PostgreSQL
    dev_prefect_port: int = 4200
    dev_superset_port: int = 8088

    @field_validator("public_base_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")

    @model_validator(mode="after")
    def _default_public_url(self) -> "Settings":
        if not self.public_base_url:
            self.public_base_url = f"http://localhost:{self.port}"
        return self

    @property
    def stripe_sandbox(self) -> bool:
        return not self.stripe_secret_key

    @property
    def stripe_api_key(self) -> str:
        return self.stripe_secret_key or SANDBOX_API_KEY

    @property
    def stripe_base(self) -> str:
        if self.stripe_api_base:
            return self.stripe_api_base.rstrip("/")
        if self.stripe_sandbox:
            return f"http://127.0.0.1:{self.sandbox_port}"
        return "https://api.stripe.com"

    @property
    def stripe_test_mode_allowed(self) -> bool:
        """Whether test-mode Stripe objects (cs_test_ ids, livemode=false events) are
        accepted: everywhere but production, and in a staging deployment that opted in."""
        return self.app_env != "production" or self.allow_stripe_test_mode

    def accepts_stripe_mode(self, *, livemode: bool) -> bool:
        """Whether a Stripe object of this mode may be acted on (a live one always may)."""
        return livemode or self.stripe_test_mode_allowed

    @property
    def redirect_origins(self) -> set[str]:
        from core.urls import origin_of

        origins = {origin_of(self.public_base_url)}
        for item in self.allowed_redirect_origins.split(","):
            if item.strip():
                origins.add(origin_of(item.strip()))
        origins.discard(None)
        return origins  # type: ignore[return-value]

    def check_production(self) -> None:
        """Refuse to run production on development secrets, test-mode keys or stand-ins;
        every problem names the variable to change."""
        if self.app_env != "production":
            return
        problems = [
            *_weak_jwt_keys(self.jwt_secret, self.jwt_previous_keys),
            *self._stripe_problems(),
        ]
        if self.tool_secret_key in PUBLISHED_SECRETS:
            problems.append("TOOL_SECRET_KEY is the development default")
        if self.database_url.startswith("sqlite"):
            problems.append("DATABASE_URL is SQLite")
        if self.workspace_backend == "process":
            problems.append(
                "WORKSPACE_BACKEND=process runs every student's workspace as a local process"
                " of the worker's user, with no isolation (use docker)"
            )
        if _is_loopback(self.smtp_host) and self.smtp_port == MAIL_CATCHER_SMTP_PORT:
            problems.append(
                f"SMTP_HOST/SMTP_PORT is a mail catcher ({self.smtp_host}:{self.smtp_port}, "
                "`make dev`'s default): no email would reach anyone"
            )
        if self.prefect_api_url and not self.prefect_api_auth_string:
            problems.append(
                "PREFECT_API_AUTH_STRING is empty (set the Prefect server's "
                "PREFECT_SERVER_API_AUTH_STRING and the same value here)"
            )
        dev = development_tools(self)
        if dev:
            problems.append(f"development tool adapters selected: {', '.join(dev)}")
        if problems:
            raise RuntimeError(
                "refusing to start with APP_ENV=production (the default when unset; `make dev` "
                "runs APP_ENV=development): " + "; ".join(problems)
            )

    def _stripe_problems(self) -> list[str]:
        problems = []
        if self.stripe_sandbox:
            problems.append("STRIPE_SECRET_KEY is unset (offline sandbox)")
        if not self.stripe_webhook_secret:
            problems.append("STRIPE_WEBHOOK_SECRET is empty")
        elif self.stripe_webhook_secret in PUBLISHED_SECRETS:
            problems.append("STRIPE_WEBHOOK_SECRET is the development (sandbox) secret")
        if not self.allow_stripe_test_mode:
            for name, key in (
                ("STRIPE_SECRET_KEY", self.stripe_secret_key),
                ("STRIPE_PUBLISHABLE_KEY", self.stripe_publishable_key),
            ):
                if key.startswith(STRIPE_TEST_KEY_PREFIXES):
                    problems.append(
                        f"{name} is a Stripe test-mode key (a staging deployment sets "
                        "ALLOW_STRIPE_TEST_MODE=true)"
                    )
        return problems

    # ---- accounts, sessions and abuse limits (issue #5) -------------------------------
    # Old JWT keys still accepted for verification during a rotation: "kid:secret,kid:secret".
    jwt_previous_keys: str = ""
    reset_password_token_minutes: int = 60
    # None: on everywhere except APP_ENV=test (tests turn them on where they test them).
    rate_limit_enabled: bool | None = None
    rate_limit_backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # The reverse proxies in front of the API (IPs or CIDRs, comma-separated). Only a request
    # from one of them may name its client in X-Forwarded-For; empty: the peer is the client.
    trusted_proxies: str = ""
    # "N/period" (period: s, min, h, day, optionally with a count: "5/15min"); "" = no limit.
    # `_ip` counts per client address, `_email` per email, `_email_ip` per email and address.
    rate_limit_checkout_ip: str = "20/min"
    rate_limit_checkout_email_ip: str = "10/h"
    rate_limit_login_ip: str = "30/min"  # every attempt
    rate_limit_login_email_ip: str = "10/15min"  # failed ones only, like the next
    # Past this, a password is checked only from a browser that logged in to the account before.
    rate_limit_login_email: str = "50/h"
    rate_limit_forgot_password_ip: str = "10/h"
    rate_limit_forgot_password_email: str = "3/h"
    rate_limit_set_password_ip: str = "10/min"
    rate_limit_verify_session_ip: str = "120/min"
    # Ids Stripe does not know: each cost a Temporal and a Stripe call.
    rate_limit_verify_session_unknown_ip: str = "10/10min"
    # Live progress (the success page's event stream and verify-session's long-poll): open
    # streams per client address and per API process; beyond, 429 and 503.
    progress_streams_per_client: int = 4
    progress_streams_max: int = 2000
    progress_heartbeat_seconds: float = 15.0  # an SSE comment line this often keeps proxies open
    # SQLite has no LISTEN: each API process reads the watched enrollments' versions this often.
    progress_poll_interval_ms: int = 250
    # How long one stream stays open at most; the page then reads verify-session once.
    progress_stream_max_minutes: float = 20.0
    # How long a browser is remembered as one its account logged in from (see above).
    login_device_days: int = 90
    max_body_bytes: int = 64 * 1024
    max_webhook_body_bytes: int = 512 * 1024
    max_json_depth: int = 32

    # operations
    metrics_host: str = "127.0.0.1"  # where metrics are served privately; 0.0.0.0 in containers
    # Production: the API's /metrics only here, never on the public port; 0 disables.
    api_metrics_port: int = 9463
    worker_metrics_port: int = 9464  # onramp_* metrics of the worker; 0 disables
    worker_sdk_metrics_port: int = 9465  # the Temporal SDK's temporal_* metrics; 0 disables
    # On SIGTERM the worker lets running activities finish for this long (then cancels them).
    worker_shutdown_grace_seconds: float = 20.0
    reconcile_interval_minutes: float = 10.0  # how often the reconcile Schedule runs
    reconcile_lookback_hours: float = 72.0  # Stripe retries a webhook for up to 3 days
    # How often the access-drift Schedule compares the tools with the ledger; 0 disables it.
    access_drift_interval_minutes: float = 60.0
    access_drift_max_changes: int = 100  # tool changes one drift run may make
    auto_refund_duplicates: bool = False  # refund a second purchase of an owned track
    funnel_days: int = 30  # window of the staff funnel page
    # A checkout holds its cohort seat this long: the Session's `expires_at` (Stripe allows
    # 30 minutes to 24 hours).
    checkout_hold_minutes: int = Field(default=30, ge=30, le=24 * 60)
    # A payment for a cohort that filled meanwhile: refunded, or moved to the track's next
    # cohort with a free seat (refunded when there is none).
    sold_out_payment: Literal["refund", "next_cohort"] = "refund"
    waitlist_offer_hours: float = Field(default=24.0, gt=0)  # how long an offered seat waits
    # Sessions carry after_expiration.recovery; a buyer who consented gets one reminder.
    checkout_recovery: bool = True

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, v: str) -> str:
        import ipaddress

        for item in v.split(","):
            if item.strip():
                ipaddress.ip_network(item.strip(), strict=False)  # a typo fails at startup
        return v

    @property
    def rate_limits_on(self) -> bool:
        if self.rate_limit_enabled is None:
            return self.app_env != "test"
        return self.rate_limit_enabled


def _weak_jwt_keys(secret: str, previous: str) -> list[str]:
    """JWT_SECRET and each secret of JWT_PREVIOUS_KEYS: unpublished, 32 random bytes or more."""
    problems = []
    advice = "at least 32 random bytes, e.g. `openssl rand -base64 32`"
    if secret in PUBLISHED_SECRETS:
        problems.append("JWT_SECRET is the development default")
    elif secret_bits(secret) < MIN_SECRET_BITS:
        problems.append(f"JWT_SECRET is too weak ({advice})")
    items = [item.strip() for item in previous.split(",") if item.strip()]
    for n, item in enumerate(items, 1):
        kid, _, old = item.partition(":")
        if not kid.strip() or not old.strip():
            problems.append(f"JWT_PREVIOUS_KEYS entry {n} is not kid:secret")
        elif old.strip() in PUBLISHED_SECRETS:
            problems.append(
                f"JWT_PREVIOUS_KEYS entry {n} ({kid.strip()}) is the development secret"
            )
        elif secret_bits(old.strip()) < MIN_SECRET_BITS:
            problems.append(f"JWT_PREVIOUS_KEYS entry {n} ({kid.strip()}) is too weak ({advice})")
    return problems


@lru_cache
def get_settings() -> Settings:
    return Settings()


# Which tools have a real server configured: the registry picks adapters from this, and
# production refuses to start with any tool left on its development stand-in.
def configured_tools(settings: Settings) -> dict[str, bool]:
    """Whether each tool's real server is configured."""
    return {
        TOOL_POSTGRES: bool(settings.learning_database_url),
        TOOL_SUPERSET: bool(settings.superset_url),
        TOOL_PREFECT: bool(settings.prefect_api_url),
        TOOL_JUPYTER: workspaces_configured(settings),
        TOOL_CODESERVER: workspaces_configured(settings),
    }


def workspaces_configured(settings: Settings) -> bool:
    """Local server processes need no server; containers need a container engine."""
    return settings.workspace_backend == "process" or bool(settings.docker_host)


def development_tools(settings: Settings) -> list[str]:
    """Tools that would run on a development stand-in with these settings."""
    configured = configured_tools(settings)
    return [tool for tool in ALL_TOOLS if not configured[tool]]
