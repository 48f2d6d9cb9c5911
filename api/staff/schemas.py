"""Request bodies of the staff API; answers are the support service's plain dicts."""

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Reason(_Body):
    reason: str = Field(min_length=1, max_length=500, examples=["student asked by email"])


class ToolDecision(Reason):
    tool: str = Field(min_length=1, max_length=32, examples=["superset"])


class CancelRequest(Reason):
    refund: bool = True


class GrantCreate(Reason):
    email: str = Field(max_length=320, examples=["ada@example.com"])
    name: str = Field(min_length=1, max_length=100)
    track: str = Field(min_length=1, max_length=8, examples=["DP"])


class ReconcileRequest(_Body):
    lookback_hours: float | None = Field(default=None, gt=0, le=24 * 30)
