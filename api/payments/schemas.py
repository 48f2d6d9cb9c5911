"""Request and response bodies of the payments API (the flow document's contract)."""

import unicodedata
from typing import Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_URL = 2000


def normalise_email(value: str) -> str:
    value = value.strip()
    # ASCII only: look-alike letters from other scripts must not map to someone's account.
    if not value.isascii():
        raise ValueError("use an email address with plain ASCII characters")
    try:
        info = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as err:
        raise ValueError(str(err)) from None
    return info.normalized.lower()


class CheckoutCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    email: str = Field(
        max_length=320, examples=["user@example.com"], json_schema_extra={"format": "email"}
    )
    name: str = Field(max_length=200, examples=["John Doe"])
    track: Literal["DP", "FSD"]
    success_url: str | None = Field(default=None, max_length=MAX_URL)
    cancel_url: str | None = Field(default=None, max_length=MAX_URL)

    @field_validator("email")
    @classmethod
    def _email(cls, v: str) -> str:
        return normalise_email(v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        v = " ".join(v.split())
        if not 1 <= len(v) <= 100:
            raise ValueError("name must be 1 to 100 characters")
        if any(unicodedata.category(c).startswith("C") for c in v):
            raise ValueError("name must not contain control characters")
        return v


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


class WebhookAck(BaseModel):
    received: bool = True
    outcome: str
