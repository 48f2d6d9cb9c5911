"""Request and response bodies of the accounts API."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.payments.schemas import EMAIL, UserPublic
from core.accounts.emails import normalise_email
from core.accounts.security import MAX_PASSWORD_LENGTH


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class LoginRequest(_Body):
    email: str = Field(max_length=320, examples=["user@example.com"], json_schema_extra=EMAIL)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)

    @field_validator("email")
    @classmethod
    def _email(cls, v: str) -> str:
        return normalise_email(v)


class RefreshRequest(_Body):
    """Without `refresh`, the HttpOnly refresh cookie is used (and a CSRF token required)."""

    refresh: str | None = Field(default=None, max_length=4096)


class LogoutRequest(RefreshRequest):
    pass


class SetPasswordRequest(_Body):
    token: str = Field(min_length=16, max_length=200)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)


class ForgotPasswordRequest(_Body):
    email: str = Field(max_length=320, examples=["user@example.com"], json_schema_extra=EMAIL)

    @field_validator("email")
    @classmethod
    def _email(cls, v: str) -> str:
        return normalise_email(v)


class AccountPublic(UserPublic):
    username: str


class TokenResponse(BaseModel):
    access: str
    refresh: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int  # seconds until the access token expires
    user: AccountPublic


class Accepted(BaseModel):
    accepted: Literal[True] = True
    message: str


class LoggedOut(BaseModel):
    logged_out: Literal[True] = True
