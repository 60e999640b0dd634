"""The one retry loop of the download package (``transfer.with_retries``): transient failures
are retried with full-jitter backoff, an unreachable source and a final error are not, and no
retry starts past the deadline."""

from __future__ import annotations

import asyncio

import pytest

from loraserve.resolution.download import SourceUnreachableError, TransientSourceError
from loraserve.resolution.download.transfer import backoff, with_retries


class Flaky:
    """Fails with ``errors`` in turn, then answers "ok"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_backoff_is_full_jitter_capped_at_8_seconds():
    assert [backoff(n, jitter=lambda: 1.0) for n in range(7)] == [0.25, 0.5, 1, 2, 4, 8, 8]
    assert backoff(3, jitter=lambda: 0.5) == 1.0
    assert backoff(3, jitter=lambda: 0.0) == 0.0


async def test_transient_failures_are_retried_after_jittered_sleeps():
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    attempt = Flaky(TransientSourceError("503"), TimeoutError())
    assert await with_retries(attempt, what="x", retries=3, jitter=lambda: 0.5, sleep=sleep) == "ok"
    assert attempt.calls == 3 and slept == [0.125, 0.25]


@pytest.mark.parametrize("error", [SourceUnreachableError("refused"), PermissionError("denied")])
async def test_unreachable_and_final_errors_are_not_retried(error):
    attempt = Flaky(error)
    with pytest.raises(type(error)):
        await with_retries(attempt, what="x", retries=3, sleep=lambda s: asyncio.sleep(0))
    assert attempt.calls == 1


async def test_retries_run_out_and_the_last_error_raises():
    attempt = Flaky(TransientSourceError("a"), TransientSourceError("b"), TransientSourceError("c"))
    with pytest.raises(TransientSourceError, match="b"):
        await with_retries(attempt, what="x", retries=1, sleep=lambda s: asyncio.sleep(0))
    assert attempt.calls == 2


async def test_no_retry_starts_past_the_deadline():
    attempt = Flaky(TransientSourceError("503"))
    end = asyncio.get_running_loop().time() + 0.1  # a 0.25 s backoff would pass it
    with pytest.raises(TransientSourceError):
        await with_retries(attempt, what="x", retries=5, end=end, jitter=lambda: 1.0)
    assert attempt.calls == 1
