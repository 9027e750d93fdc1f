"""One retry loop for every network call: exponential backoff, capped, for failures worth another attempt.

The caller decides what is transient by raising `TransientError` from its action; anything else goes straight
through. Each retry is logged with the caller's description; when the attempts run out the caller's
`give_up` turns the last failure into the error the user sees.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

MAX_BACKOFF = 30.0  # seconds: a longer pause helps no registry or mirror, and holds up Ctrl-C


class TransientError(Exception):
    """A failure worth another attempt: a connection error, a stall, 429 or a 5xx answer."""


@dataclass(frozen=True, kw_only=True)
class Backoff:
    retries: int  # attempts after the first
    base: float  # seconds before the first retry; doubled for each further one

    def delay(self, attempt: int) -> float:
        """The pause after failed attempt number `attempt` (1 for the first)."""
        return float(min(self.base * 2 ** (attempt - 1), MAX_BACKOFF))


def call(
    action: Callable[[int], T],
    *,
    backoff: Backoff,
    describe: str,
    give_up: Callable[[int, TransientError], Exception],
    log: logging.Logger,
    mask: Callable[[str], str] = str,
    wait: Callable[[float], object] = time.sleep,
) -> T:
    """`action(attempt)` until it returns; `TransientError` failures are retried, up to `backoff.retries` times.

    `describe` heads each retry's log line (already masked); `mask` cleans the failure's text; `wait` pauses
    (an abort-aware wait ends early); `give_up(attempts, last)` builds the exception raised at the end.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return action(attempt)
        except TransientError as failure:
            if attempt > backoff.retries:
                raise give_up(attempt, failure) from None
            delay = backoff.delay(attempt)
            log.warning("%s: %s; retrying in %.2fs (attempt %d of %d)", describe, mask(str(failure)), delay,
                        attempt + 1, backoff.retries + 1)
            wait(delay)

