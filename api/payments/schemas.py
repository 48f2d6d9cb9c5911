"""Request and response bodies of the payments API (the flow document's contract)."""

import re
import unicodedata
from datetime import datetime
from typing import Annotated, Literal, Self

from email_validator import SPECIAL_USE_DOMAIN_NAMES
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    field_validator,
    model_validator,
)

from core.accounts.emails import normalise_email
from core.tracks import TrackCode
from core.urls import any_case

MAX_URL = 2000
MAX_NAME = 100
# Published as the `format` of a person's name; `CheckoutCreate._name` is its rule.
NAME_FORMAT = "person-name"
REDIRECT_URL = (
    "Where Stripe sends the browser {when}: a URL on an allowed origin, this site's own "
    "(PUBLIC_BASE_URL) or one listed in ALLOWED_REDIRECT_ORIGINS; the pattern spells them "
    "out. Absent or empty: this site's {page} page. Another origin is refused with a 400."
)


_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_LABEL = r"[A-Za-z0-9]{1,20}(?:-[A-Za-z0-9]{1,20}){0,2}"
_TLD = r"(?:[A-Za-z0-9]{1,20}-){0,2}[A-Za-z0-9]{0,19}[A-Za-z]"
_SPECIAL_USE = "|".join(any_case(name) for name in SPECIAL_USE_DOMAIN_NAMES)
# Addresses email-validator takes, spelled as a JSON Schema pattern without lookaheads
# that bound lengths (generators cannot satisfy those): a local part of at most 63
# characters, two or three labels of at most 62, no `--` (Punycode), a top-level domain
# that ends with a letter and is not special-use. A few unusual addresses it does not
# spell are taken too (a longer local part, more labels); the published pattern is what
# every client can rely on.
EMAIL_PATTERN = (
    rf"^[{_ATEXT}]{{1,31}}(?:\.[{_ATEXT}]{{1,31}})?"
    rf"@(?:{_LABEL}\.){{1,2}}(?!(?:{_SPECIAL_USE})$){_TLD}$"
)
# No `format: email` beside it: the pattern is the narrower rule, and generators that must
# satisfy both take seconds per field.
EMAIL: dict[str, JsonValue] = {
    "pattern": EMAIL_PATTERN,
    "description": "An email address; the pattern spells the ones every Onramp route takes.",
}


COHORT_CODE = r"^[A-Za-z0-9][A-Za-z0-9-]{0,39}$"
OFFER_TOKEN = r"^[A-Za-z0-9_-]{20,100}$"


class CheckoutCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    email: str = Field(max_length=320, examples=["user@example.com"], json_schema_extra=EMAIL)
    name: str = Field(
        max_length=200,
        examples=["John Doe"],
        description=f"1 to {MAX_NAME} characters once runs of whitespace are collapsed, "
        "none of them control, format, private-use or unassigned characters (Unicode "
        "category C).",
        json_schema_extra={"format": NAME_FORMAT},
    )
    track: TrackCode
    success_url: str | None = Field(
        default=None,
        max_length=MAX_URL,
        description=REDIRECT_URL.format(when="after payment", page="/payment/success"),
    )
    cancel_url: str | None = Field(
        default=None,
        max_length=MAX_URL,
        description=REDIRECT_URL.format(when="if the payer cancels", page="/payment/cancel"),
    )
    cohort: str | None = Field(
        default=None,
        pattern=COHORT_CODE,
        description="The cohort's code (GET /api/payments/cohorts/). Absent: the track's next "
        "cohort on sale. Unknown: 404; closed or sold out: 409 (sold out: join the waitlist).",
        examples=["DP-2027-01"],
    )
    offer: str | None = Field(
        default=None,
        pattern=OFFER_TOKEN,
        description="The token of a waitlist offer (the personal link's `offer`): the seat "
        "held for that person. Run out, used or for another email: 409.",
    )

    @field_validator("email")
    @classmethod
    def _email(cls, v: str) -> str:
        return normalise_email(v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return person_name(v)


def person_name(v: str) -> str:
    """A person's name as NAME_FORMAT publishes it: whitespace runs collapsed, 1 to
    MAX_NAME characters, none of Unicode category C (control, format, surrogate, private
    use, unassigned: PostgreSQL cannot even store a NUL)."""
    v = " ".join(v.split())
    if not 1 <= len(v) <= MAX_NAME:
        raise ValueError(f"name must be 1 to {MAX_NAME} characters")
    if any(unicodedata.category(c).startswith("C") for c in v):
        raise ValueError("name must not contain control characters")
    return v


class CohortPublic(BaseModel):
    """A cohort as buyers see it: the get-started cards show the first one of each track."""

    code: str
    track: TrackCode
    starts_at: datetime
    size: int
    seats_left: int = Field(ge=0)
    state: Literal["draft", "on_sale", "sold_out", "closed", "running"]
    waitlist: bool = Field(description="Sold out: POST /api/payments/waitlist/ takes a place")


class CohortList(BaseModel):
    cohorts: list[CohortPublic]


class WaitlistJoin(BaseModel):
    model_config = ConfigDict(extra="ignore")

    email: str = Field(max_length=320, examples=["user@example.com"], json_schema_extra=EMAIL)
    name: str = Field(
        max_length=200,
        examples=["John Doe"],
        description=f"1 to {MAX_NAME} characters, as for the checkout",
        json_schema_extra={"format": NAME_FORMAT},
    )
    track: TrackCode
    cohort: str | None = Field(
        default=None,
        pattern=COHORT_CODE,
        description="The sold-out cohort's code; absent: the track's next cohort on sale",
    )

    @field_validator("email")
    @classmethod
    def _email(cls, v: str) -> str:
        return normalise_email(v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return person_name(v)


class WaitlistPlace(BaseModel):
    cohort: str
    position: int = Field(ge=1, description="Place in line now: people waiting ahead, plus one")
    state: Literal["waiting", "offered", "claimed", "passed"]
    created: bool = Field(description="False: this email was on the list already")


class CheckoutCreated(BaseModel):
    sessionId: str  # noqa: N815 (the contract's spelling)
    url: str


class UserPublic(BaseModel):
    id: int
    email: str
    name: str
    role: str
    track: str | None
    enrollment_status: str


class ToolPublic(BaseModel):
    tool: str
    label: str
    status: str
    url: str
    development: bool


class VerifiedSession(BaseModel):
    success: Literal[True] = True
    user: UserPublic
    access: str | None = None
    refresh: str | None = None
    login_required: bool
    # Why a login is required (null when this answer logged the browser in): other_browser,
    # existing_account, password_set, already_used, logged_in, expired.
    login_reason: str | None = None
    track: str
    tools_provisioned: bool
    workspace_url: str
    superset_url: str
    prefect_url: str
    jupyter_url: str
    enrollment_status: str
    tools: list[ToolPublic]
    progress: dict[str, object]


class ToolStatus(BaseModel):
    tool: str
    label: str
    status: str


class VerifiedSessionLimited(BaseModel):
    """The 200 answer to anyone but the buyer: no name, email, id, link or detail."""

    success: Literal[True] = True
    login_required: Literal[True] = True
    login_reason: Literal["other_browser"] = "other_browser"
    track: str
    enrollment_status: str
    tools: list[ToolStatus]
    progress: dict[str, object]


class PendingSession(BaseModel):
    error: str = "Account not created yet"
    message: str = "Your account is being set up. Please wait a moment and refresh."
    progress: dict[str, object]
    # Pass back as `since` with `wait` to long-poll: answered once the state moves past it.
    version: str | None = None


class StripeEventObject(BaseModel):
    """`data.object`: the Stripe object the event is about."""

    model_config = ConfigDict(extra="allow")

    id: str | None = Field(default=None, min_length=1, max_length=255)
    object: str | None = Field(default=None, max_length=100)


class StripeEventData(BaseModel):
    model_config = ConfigDict(extra="allow")

    object: StripeEventObject


def _whole(value: object) -> object:
    # JSON Schema's integer includes 5.0; a strict int field would refuse it.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Seconds since the epoch, as the stripe_event row's 32-bit column holds them.
Timestamp = Annotated[int, Field(ge=0, le=2**31 - 1), BeforeValidator(_whole)]

# The object each handled event family carries (`data.object.object`), longest prefix first.
EVENT_OBJECTS = (
    ("checkout.session.", "checkout.session"),
    ("payment_intent.", "payment_intent"),
    ("charge.dispute.", "dispute"),
    ("charge.", "charge"),
)


def object_kind(event_type: str) -> str | None:
    """The object an event of this type must carry; None for the types the API ignores."""
    return next((kind for prefix, kind in EVENT_OBJECTS if event_type.startswith(prefix)), None)


def _event_object_rules() -> list[JsonValue]:
    """`object_kind` as JSON Schema: if the type starts so, then data.object is that kind."""
    rules: list[JsonValue] = []
    for prefix, kind in EVENT_OBJECTS:
        longer = [
            p[len(prefix) :] for p, _ in EVENT_OBJECTS if p != prefix and p.startswith(prefix)
        ]
        excluded = "".join(f"(?!{re.escape(rest)})" for rest in longer)
        promised: JsonValue = {
            "required": ["object", "id"],
            "properties": {"object": {"const": kind}, "id": {"type": "string"}},
        }
        rules.append(
            {
                "if": {
                    "required": ["type"],
                    "properties": {"type": {"pattern": f"^{re.escape(prefix)}{excluded}"}},
                },
                "then": {"properties": {"data": {"properties": {"object": promised}}}},
            }
        )
    return rules


class StripeEvent(BaseModel):
    """A Stripe event, as the webhook reads it once its signature verified.

    An event of a type the API handles must carry the object that type promises, with its
    id: `checkout.session.*` a `checkout.session`, `payment_intent.*` a `payment_intent`,
    `charge.dispute.*` a `dispute`, any other `charge.*` a `charge`."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"allOf": _event_object_rules()})

    id: str = Field(min_length=1, max_length=255, examples=["evt_1NG8Du2eZvKYlo2CUI79vXWy"])
    type: str = Field(min_length=1, max_length=100, examples=["checkout.session.expired"])
    created: Timestamp | None = Field(default=None, examples=[1686089970])
    data: StripeEventData

    @model_validator(mode="after")
    def _carries_its_object(self) -> Self:
        kind = object_kind(self.type)
        obj = self.data.object
        if kind is not None and (obj.object != kind or obj.id is None):
            raise ValueError(f"a {self.type} event carries a {kind} with an id")
        return self


class WebhookAck(BaseModel):
    received: bool = True
    outcome: str
