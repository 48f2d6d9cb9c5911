"""The floor: a workflow shaped like a DP enrollment whose activities do nothing.

Same number of activities and the same parallelism as EnrollmentWorkflow for the DP track
(record_payment, create_account, mark_enrolled, 4 parallel provision_tool,
unlock_first_project, send_welcome_email, set_enrollment_status), the same timeouts and
retry policy, run by a worker built like `worker.py` (thread-pool activities, the same
slot counts). Run as `python -m bench.noop --address HOST:PORT --task-queue NAME`.
"""

import argparse
import asyncio
import signal
from concurrent.futures import ThreadPoolExecutor

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from workflows.enrollment import STEP_RETRY, STEP_TIMEOUT

DP_TOOLS = ("postgres", "superset", "prefect", "jupyter")
BEFORE_TOOLS = ("record_payment", "create_account", "mark_enrolled")
AFTER_TOOLS = ("unlock_first_project", "send_welcome_email", "set_enrollment_status")
ACTIVITY_COUNT = len(BEFORE_TOOLS) + len(DP_TOOLS) + len(AFTER_TOOLS)


@activity.defn
def noop_step(step: str) -> str:
    return step


@workflow.defn
class NoopEnrollmentWorkflow:
    @workflow.run
    async def run(self, key: str) -> str:
        for step in BEFORE_TOOLS:
            await self._step(step)
        await asyncio.gather(*(self._step(f"provision_tool:{tool}") for tool in DP_TOOLS))
        for step in AFTER_TOOLS:
            await self._step(step)
        return key

    async def _step(self, step: str) -> str:
        return await workflow.execute_activity(
            noop_step, step, start_to_close_timeout=STEP_TIMEOUT, retry_policy=STEP_RETRY
        )


def build_noop_worker(client: Client, task_queue: str, executor: ThreadPoolExecutor) -> Worker:
    from worker import MAX_CONCURRENT_ACTIVITIES

    return Worker(
        client,
        task_queue=task_queue,
        workflows=[NoopEnrollmentWorkflow],
        activities=[noop_step],
        activity_executor=executor,
        max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
    )


async def main() -> None:
    from worker import MAX_CONCURRENT_ACTIVITIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--task-queue", required=True)
    args = parser.parse_args()
    client = await Client.connect(args.address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with ThreadPoolExecutor(max_workers=MAX_CONCURRENT_ACTIVITIES) as executor:
        async with build_noop_worker(client, args.task_queue, executor):
            await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
