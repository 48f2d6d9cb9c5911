"""FastAPI dependencies: settings, a request-scoped DB session, Temporal and Stripe."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session
from temporalio.client import Client

from core.payments.stripe_gateway import StripeGateway
from core.settings import Settings

# The lookups are `async def`: FastAPI runs a plain `def` dependency in the thread pool, a
# thread hop per dependency on every request (about a fifth of a finished poll's API CPU).


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_session(request: Request) -> Iterator[Session]:
    """The request owns the transaction: commit on success, roll back on any error."""
    with Session(request.app.state.engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


async def get_temporal(request: Request) -> Client:
    return request.app.state.temporal  # type: ignore[no-any-return]


async def get_stripe(request: Request) -> StripeGateway:
    return request.app.state.stripe  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
# scope="function": commit before the response is sent, never after the client has it.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
TemporalDep = Annotated[Client, Depends(get_temporal)]
StripeDep = Annotated[StripeGateway, Depends(get_stripe)]
