"""The time-skipping test server shared by the workflow tests."""

from collections.abc import AsyncIterator

import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from core.temporal import register_search_attributes
from tests.utils.helpers import binary


@pytest_asyncio.fixture(scope="session")
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=binary("temporal-test-server")
    )
    # The test server hangs on unregistered custom search attributes: register first.
    await register_search_attributes(env.client, "default")
    yield env
    await env.shutdown()
