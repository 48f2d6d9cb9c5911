"""The retry policy of every workflow step: quick first retries, then at most 30 s apart.

Business failures are raised by activities as non-retryable application errors; each
workflow names the types it treats so.
"""

from datetime import timedelta

from temporalio.common import RetryPolicy


def step_retry(non_retryable: list[str]) -> RetryPolicy:
    return RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=30),
        non_retryable_error_types=non_retryable,
    )
