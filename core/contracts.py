"""The vocabulary the API, the workflows and their activities share: the dataclasses passed
between them, the enrollment and tool statuses, the status groups, and workflow names.

Pure (no I/O), so workflow code imports it. Dataclass fields are only ever added with
defaults, so running workflows keep decoding them.
"""

from dataclasses import dataclass, field
from enum import StrEnum

from temporalio.common import SearchAttributeKey

from core.tracks import TOOL_LABELS

WORKFLOW_ID_PREFIX = "enrollment-"
# Workflow types by name, so code below the workflows (core) can start and read them.
ENROLLMENT_WORKFLOW = "EnrollmentWorkflow"
# EnrollmentWorkflow's handlers by name: later events arrive as this signal (signal-with-start),
# and a caller waits for one event's outcome with this update.
LIFECYCLE_SIGNAL = "lifecycle"
OUTCOME_UPDATE = "outcome"
# AccessChangeInput.action
REVOKE = "revoke"
REINSTATE = "reinstate"
# LifecycleEvent.kind: what reaches an enrollment's owner while or after it is fulfilled.
REFUNDED = "refunded"  # the charge refunded in full
DISPUTE_OPENED = "dispute_opened"
DISPUTE_WON = "dispute_won"
DISPUTE_LOST = "dispute_lost"
SUPPORT_REVOKE = "support_revoke"  # support's revoke: refund through Stripe, then withdraw
# The kinds that withdraw access (and stop a run still provisioning).
WITHDRAWING_EVENTS = frozenset({REFUNDED, DISPUTE_OPENED, DISPUTE_LOST, SUPPORT_REVOKE})

SA_EMAIL = SearchAttributeKey.for_keyword("EnrollmentEmail")
SA_TRACK = SearchAttributeKey.for_keyword("EnrollmentTrack")
SA_STATUS = SearchAttributeKey.for_keyword("EnrollmentStatus")
SA_NEEDS_ATTENTION = SearchAttributeKey.for_bool("NeedsAttention")
SA_FAILED_TOOL = SearchAttributeKey.for_keyword_list("FailedTool")
SEARCH_ATTRIBUTES = {
    "EnrollmentEmail": "Keyword",
    "EnrollmentTrack": "Keyword",
    "EnrollmentStatus": "Keyword",
    "NeedsAttention": "Bool",
    "FailedTool": "KeywordList",
}


class EnrollmentStatus(StrEnum):
    """Lifecycle of one Checkout Session's enrollment."""

    CHECKOUT_CREATED = "CHECKOUT_CREATED"  # session created, not paid yet
    PAYMENT_PENDING = "PAYMENT_PENDING"  # completed with a delayed payment method
    PAID = "PAID"  # payment confirmed, workflow started
    ENROLLED = "ENROLLED"  # account attached, payment verified, tools on the way
    NEEDS_ATTENTION = "NEEDS_ATTENTION"  # a tool failed past its retries; support decides
    READY = "READY"  # every step done
    PAYMENT_FAILED = "PAYMENT_FAILED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"  # support cancelled (and refunded)
    REVOKED = "REVOKED"  # refunded or disputed: access withdrawn
    DUPLICATE = "DUPLICATE"  # the email already owned this track: held for support
    # Stripe's copy of the Session does not match what we sold (not our checkout, another
    # amount, currency or mode, the other livemode): nothing provisioned, support decides.
    PAYMENT_MISMATCH = "PAYMENT_MISMATCH"


# Access has ended: no path may start or resume these without a person reinstating them.
ACCESS_ENDED_STATUSES = frozenset(
    {
        EnrollmentStatus.CANCELLED,
        EnrollmentStatus.REVOKED,
        EnrollmentStatus.DUPLICATE,
        EnrollmentStatus.PAYMENT_MISMATCH,
    }
)


# Statuses whose access was withdrawn (cancelled by support, or refunded/disputed): a
# revocation finds nothing left to take away.
CLOSED_STATUSES = frozenset({EnrollmentStatus.CANCELLED, EnrollmentStatus.REVOKED})
# Enrolled and giving access: what a second purchase of the same track collides with.
ACTIVE_STATUSES = (
    EnrollmentStatus.ENROLLED,
    EnrollmentStatus.NEEDS_ATTENTION,
    EnrollmentStatus.READY,
)
# States a late or out-of-order event may still move; never downgrade a paid enrollment.
UNPAID_STATUSES = (EnrollmentStatus.CHECKOUT_CREATED, EnrollmentStatus.PAYMENT_PENDING)
# Never paid (or the payment failed): nothing to refund, revoke or replay.
NOT_PAID_STATUSES = (*UNPAID_STATUSES, EnrollmentStatus.PAYMENT_FAILED, EnrollmentStatus.EXPIRED)
# Paid and its workflow may still be moving: a dashboard shows their progress.
IN_PROGRESS_STATUSES = (
    EnrollmentStatus.PAID,
    EnrollmentStatus.ENROLLED,
    EnrollmentStatus.NEEDS_ATTENTION,
)
# Landed: the student has an account and the first round of tools (some may wait on support).
READY_TO_LAND = (EnrollmentStatus.READY, EnrollmentStatus.NEEDS_ATTENTION)


class ToolStatus(StrEnum):
    """One tool account's state, as its adapter reports it and the tool_account row keeps it."""

    READY = "ready"
    DISABLED = "disabled"  # deprovisioned (revoked, cancelled): kept, cannot log in
    ABSENT = "absent"  # the tool has no account for this subject
    PENDING = "pending"  # not provisioned yet (no row)


def workflow_id_for(checkout_session_id: str) -> str:
    return f"{WORKFLOW_ID_PREFIX}{checkout_session_id}"


# The enrollment's steps other than its tools, each with a budget (step_budget_seconds).
BUDGETED_STEPS = ("payment", "account", "project", "email")


@dataclass
class EnrollmentOptions:
    # How long one tool's provisioning is retried before support is asked to decide.
    tool_retry_seconds: float = 600.0
    support_email: str = ""
    # How long any other step (payment record, account, project, email) is retried before
    # support is asked to decide (retry or cancel).
    step_budget_seconds: float = 600.0
    # How long the run stays open once the enrollment landed or ended, owning its later
    # events (settings.enrollment_owner_days); 0 (runs started before it): it closes.
    owner_seconds: float = 0.0


@dataclass
class EnrollmentInput:
    checkout_session_id: str
    email: str
    name: str
    track: str
    amount: int | None = None
    currency: str | None = None
    payment_intent_id: str | None = None
    customer_id: str | None = None
    source: str = ""  # what started it: "webhook:<type>", "verify-session", "reconcile", ...
    options: EnrollmentOptions = field(default_factory=EnrollmentOptions)
    # The track's tools when the run started: a catalogue change never alters an open run.
    # Empty in runs started before this field (they read the catalogue, as recorded).
    tools: list[str] = field(default_factory=list)
    # Set for a run that owns an enrollment already fulfilled: continued from an earlier
    # run (continue-as-new), or started by a later event (signal-with-start). It never
    # fulfils: it handles events against the ledger.
    owner: "OwnerCarry | None" = None


@dataclass
class AccountResult:
    enrollment_id: int
    user_id: int
    username: str
    account_created: bool
    # The same email already completed an enrollment in this track: never enrol twice.
    duplicate_of: str | None = None
    # Who the tools are for, from the user row (empty in runs recorded before these fields).
    email: str = ""
    name: str = ""


@dataclass
class EnrollmentRef:
    enrollment_id: int
    user_id: int
    checkout_session_id: str


@dataclass
class ToolInput:
    enrollment_id: int
    user_id: int
    checkout_session_id: str
    tool: str
    # The tool's subject as create_account read it, so each provisioning attempt need not
    # read the user again; empty (read from the database) in runs recorded before.
    username: str = ""
    email: str = ""
    name: str = ""


@dataclass
class ToolResult:
    tool: str
    status: str
    url: str = ""
    development: bool = False


@dataclass
class ToolFailure:
    enrollment_id: int
    checkout_session_id: str
    tool: str
    error: str
    error_type: str = ""
    step: str = ""  # a step other than a tool's ("payment", "account", "project", "email")


@dataclass
class WelcomeEmailInput:
    enrollment_id: int
    user_id: int
    account_created: bool
    tools: list[ToolResult] = field(default_factory=list)
    pending_tools: list[str] = field(default_factory=list)


@dataclass
class StatusInput:
    enrollment_id: int
    status: str
    needs_attention: bool = False
    reason: str | None = None


@dataclass
class Decision:
    """Support's answer for a tool that ran out of retries, or for the whole enrollment."""

    action: str  # "retry" | "skip" | "cancel"
    actor: str
    reason: str
    tool: str = ""  # empty for "cancel"
    refund: bool = True


@dataclass
class CancelInput:
    enrollment_id: int
    user_id: int | None
    checkout_session_id: str
    payment_intent_id: str | None
    actor: str
    reason: str
    refund: bool
    tools: list[str] = field(default_factory=list)


@dataclass
class AccessChangeInput:
    checkout_session_id: str
    action: str  # REVOKE | REINSTATE
    cause: str  # "refund" | "dispute" | "support"
    actor: str
    reason: str
    stripe_object_id: str = ""  # the charge or dispute behind it, if any
    refund: bool = False  # refund the payment through Stripe first (support's revoke)
    previous_status: str = ""  # the status before the revocation; empty: the ledger's


@dataclass
class AccessPlan:
    enrollment_id: int
    user_id: int | None
    tools: list[str] = field(default_factory=list)
    changed: bool = True  # False: the enrollment was already in the target state
    user_active: bool | None = None
    note: str = ""


@dataclass
class AccessChangeRecord:
    inp: AccessChangeInput
    plan: AccessPlan
    refund_id: str = ""
    done_tools: list[str] = field(default_factory=list)
    failed_tools: list[str] = field(default_factory=list)


@dataclass
class AccessChangeResult:
    checkout_session_id: str
    action: str
    status: str
    changed: bool
    tools: list[str] = field(default_factory=list)
    failed_tools: list[str] = field(default_factory=list)
    refund_id: str = ""
    user_active: bool | None = None
    note: str = ""


@dataclass
class LifecycleEvent:
    """A later event for an enrollment's owner: Stripe's refund or dispute, support's revoke."""

    kind: str  # REFUNDED | DISPUTE_OPENED | DISPUTE_WON | DISPUTE_LOST | SUPPORT_REVOKE
    # Stripe's event id (support's: derived from the request): a redelivery is handled once.
    event_id: str
    actor: str
    reason: str
    stripe_object_id: str = ""  # the charge or dispute


@dataclass
class Step:
    key: str  # "payment", "account", "tool:<name>", "project", "email"
    label: str
    status: str = "pending"  # pending | running | retrying | done | failed | skipped
    detail: str = ""


@dataclass
class EnrollmentState:
    checkout_session_id: str
    email: str
    track: str
    status: str
    steps: list[Step] = field(default_factory=list)
    user_id: int | None = None
    enrollment_id: int | None = None
    account_created: bool = False
    tools: dict[str, ToolResult] = field(default_factory=dict)
    failed_tools: list[str] = field(default_factory=list)
    failed_steps: list[str] = field(default_factory=list)  # out of budget, awaiting support
    needs_attention: bool = False
    # The student can land: account, first round of tools, first project and email done.
    student_ready: bool = False
    finished: bool = False

    def step(self, key: str) -> Step:
        return next(s for s in self.steps if s.key == key)

    def progress(self, audience: str = "staff") -> dict[str, object]:
        """Step by step. For `student` the details are plain words (raw tool errors, SQL
        states and host names are for staff and the logs); for `public` (whoever holds the
        session id but is not the buyer) there are no details at all."""
        done = sum(1 for s in self.steps if s.status in ("done", "skipped"))
        current = next((s for s in self.steps if s.status not in ("done", "skipped")), None)
        return {
            "steps_done": done,
            "steps_total": len(self.steps),
            "current_step": current.key if current else None,
            "current_step_label": current.label if current else None,
            "needs_attention": self.needs_attention,
            "steps": [
                {"key": s.key, "label": s.label, "status": s.status, "detail": _detail(s, audience)}
                for s in self.steps
            ],
        }


def initial_state(inp: "EnrollmentInput", tools: list[str]) -> EnrollmentState:
    """A run's state before its first step: the one step list, for the workflow's start and
    for the memo the run is started with (what a reader sees before any worker answers)."""
    return EnrollmentState(
        checkout_session_id=inp.checkout_session_id,
        email=inp.email,
        track=inp.track,
        status=EnrollmentStatus.PAID,
        steps=[
            Step("payment", "Payment confirmed"),
            Step("account", "Account created"),
            *[Step(f"tool:{t}", f"{TOOL_LABELS[t]} ready") for t in tools],
            Step("project", "First project unlocked"),
            Step("email", "Welcome email sent"),
        ],
    )


DEVELOPMENT_DETAIL = "development stand-in"
# What a student reads beside a step, by its status; the raw detail stays with staff.
STUDENT_DETAILS = {
    "retrying": "Taking a little longer; retrying",
    "failed": "Our team has been told and is finishing this",
    "skipped": "Our team will contact you about this",
}


def _detail(step: Step, audience: str) -> str:
    if audience == "staff":
        return step.detail
    if audience == "public":
        return ""
    if step.detail == DEVELOPMENT_DETAIL:
        return step.detail
    return STUDENT_DETAILS.get(step.status, "")


@dataclass
class OwnerCarry:
    """What one run of an enrollment's owner hands the next (continue-as-new), or what a run
    started by a later event begins with (the ledger's status, nothing handled yet)."""

    state: "EnrollmentState"
    deadline: float = 0.0  # epoch seconds the owner stays open until; 0: its lifetime from now
    seen: list[str] = field(default_factory=list)  # event ids handled (or queued), oldest first
    pending: list[LifecycleEvent] = field(default_factory=list)
    outcomes: dict[str, AccessChangeResult] = field(default_factory=dict)


def ledger_state(inp: EnrollmentInput, tools: list[str], status: str) -> EnrollmentState:
    """The state of an enrollment fulfilled earlier, as the ledger's status tells it: what a
    run started by a later event answers before and while it handles that event."""
    state = initial_state(inp, tools)
    state.status = status
    for s in state.steps:
        s.status = "done"
    state.student_ready = status in READY_TO_LAND
    state.finished = True
    return state
