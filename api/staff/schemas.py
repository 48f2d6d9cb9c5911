"""Request bodies of the staff API; answers are the support service's plain dicts."""

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from api.payments.schemas import COHORT_CODE, EMAIL, NAME_FORMAT, person_name
from core.contracts import BUDGETED_STEPS
from core.tracks import ALL_TOOLS, TrackCode

RETRYABLE = (*ALL_TOOLS, *BUDGETED_STEPS)

# `support.service.required` strips what it is given, so a text of only what `str.strip`
# removes is missing. Spelled as \uXXXX, which Python, Rust (pydantic) and ECMA regexes
# (JSON Schema) all read alike; U+3000 is the last such character.
_STRIPPED = "".join(f"\\u{ord(c):04x}" for c in map(chr, range(0x3001)) if c.isspace())
# One line of text: no control characters (PostgreSQL stores no NUL, the audit log no
# line breaks), at least one that is not blank. Anchored, without lookarounds (pydantic's
# regex engine has none).
_CONTROL = "\\u0000-\\u001f\\u007f-\\u009f"
NOT_BLANK = f"^[^{_CONTROL}]*[^{_STRIPPED}{_CONTROL}][^{_CONTROL}]*$"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Reason(_Body):
    reason: str = Field(
        min_length=1, max_length=500, pattern=NOT_BLANK, examples=["student asked by email"]
    )


class ToolDecision(Reason):
    tool: str = Field(examples=["superset"], json_schema_extra={"enum": list(ALL_TOOLS)})

    @field_validator("tool")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in ALL_TOOLS:
            raise ValueError(f"one of {', '.join(ALL_TOOLS)}")
        return v


class RetryDecision(Reason):
    """A retry names a tool, or a step out of its budget (payment, account, project, email)."""

    tool: str = Field(examples=["superset"], json_schema_extra={"enum": list(RETRYABLE)})

    @field_validator("tool")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in RETRYABLE:
            raise ValueError(f"one of {', '.join(RETRYABLE)}")
        return v


class CancelRequest(Reason):
    refund: bool = True


class GrantCreate(Reason):
    email: str = Field(max_length=320, examples=["ada@example.com"], json_schema_extra=EMAIL)
    name: str = Field(
        max_length=200,
        description="A person's name, as the checkout takes it.",
        json_schema_extra={"format": NAME_FORMAT},
    )
    track: TrackCode = Field(examples=["DP"])

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return person_name(v)


class ReconcileRequest(_Body):
    lookback_hours: float | None = Field(default=None, gt=0, le=24 * 30)


COHORT_STATES = Literal["draft", "on_sale", "closed", "running"]


# An RFC 3339 timestamp with its offset, as a JSON string only (not a number of seconds).
def _text_only(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError("a timestamp is a string, e.g. 2027-01-11T09:00:00Z")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_text_only)]


class CohortCreate(_Body):
    code: str = Field(pattern=COHORT_CODE, examples=["DP-2027-03"])
    track: TrackCode
    starts_at: Timestamp
    size: int = Field(ge=1, le=100_000)
    sales_open_at: Timestamp | None = Field(default=None, description="Absent: now")
    sales_close_at: Timestamp | None = Field(default=None, description="Absent: until closed")
    state: COHORT_STATES = "draft"


class CohortEdit(_Body):
    """Only what is given changes. The size never goes below the seats held and taken."""

    starts_at: Timestamp | None = None
    size: int | None = Field(default=None, ge=1, le=100_000)
    sales_open_at: Timestamp | None = None
    sales_close_at: Timestamp | None = None
    clear_sales_close: bool = Field(default=False, description="On sale until closed")
    state: COHORT_STATES | None = None
