"""Schemathesis against the running API: every JSON operation of the OpenAPI schema, valid
and invalid inputs, as a logged-in student, and never a 5xx. The webhook's happy path needs
a signature, which generated requests never have: they all test its refusals."""

import asyncio
from collections.abc import Callable
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from tests.conftest import Stack
from tests.security.conftest import browser, login, make_user

EXAMPLES_PER_OPERATION = 25


def fuzz_case(
    operation: Any, mode: GenerationMode, api_url: str, headers: dict[str, str], failures: list[str]
) -> Callable[[], None]:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call(base_url=api_url, headers=headers, timeout=20)
        if response.status_code >= 500:
            failures.append(
                f"{case.method} {case.formatted_path} -> {response.status_code}: "
                f"{response.text[:200]} (query={case.query}, body={case.body!r:.200})"
            )

    return run  # type: ignore[no-any-return]


def fuzz(api_url: str, access: str) -> list[str]:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        operations += 1
        # Logout would end the login the other operations use.
        logout = operation.path == "/api/auth/logout"
        headers = {} if logout else {"Authorization": f"Bearer {access}"}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzz_case(operation, mode, api_url, headers, failures)()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE  # nothing to get wrong, e.g. no inputs
    assert operations >= 8, "the schema lost operations"
    return failures


async def test_no_operation_answers_5xx(fresh: Stack) -> None:
    make_user(fresh.engine, "fuzzed@example.com")
    async with browser(fresh) as client:
        access = (await login(client, "fuzzed@example.com"))["access"]
    # In a thread: the session's event loop keeps serving the worker meanwhile.
    failures = await asyncio.to_thread(fuzz, fresh.api_url, access)
    assert not failures, "\n".join(failures[:20])
