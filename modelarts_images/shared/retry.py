"""One retry loop for every network call: exponential backoff, capped, for failures worth another attempt.

The caller decides what is transient by raising `TransientError` from its action; anything else goes straight
through. A failure may say it is worth fewer retries than the backoff allows (`retries`: a refused connection
gets one, not five), and carry the full message for the end (`final`: the cause and the next step) beside the
short one each retry logs. Each retry is logged on one line with the caller's description; when the attempts run
out the caller's `give_up` turns the last failure into the error the user sees.

A server that answers 429 or 503 may say how long to wait (Retry-After): the pause is then the longer of the
backoff and that wish, but never more than MAX_RETRY_AFTER, so a hostile or misconfigured header cannot park the
tool for hours.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TypeVar

T = TypeVar("T")

MAX_BACKOFF = 30.0  # seconds: a longer pause helps no registry or mirror, and holds up Ctrl-C
MAX_RETRY_AFTER = 60.0  # seconds: the most a server's Retry-After may make us wait before one retry
_LONGEST_DELTA = 10  # digits: a longer delta-seconds is read as "very long" (int() of a huge string is refused)


class TransientError(Exception):
    """A failure worth another attempt: a connection error, a stall, 429 or a 5xx answer.

    `retry_after`: the seconds the server asked to wait (its Retry-After header), None when it said nothing.
    `retries`: the most retries this failure is worth, fewer than the backoff's (None: the backoff decides).
    `final`: what give_up should say of it once the attempts run out (the cause and what to do); the message,
    which each retry logs, when not given.
    """

    def __init__(self, message: str = "", *, retry_after: float | None = None, retries: int | None = None,
                 final: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.retries = retries
        self.final = message if final is None else final


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """The seconds a Retry-After header asks for: delta-seconds ('120') or an HTTP-date; None when absent or
    unreadable (a bad header must not turn a retryable answer into a crash). A date in the past means 0."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(int(text)) if len(text) <= _LONGEST_DELTA else float(10**_LONGEST_DELTA)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # HTTP-dates are in GMT; an obsolete format may parse without a zone
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


@dataclass(frozen=True, kw_only=True)
class Backoff:
    retries: int  # attempts after the first
    base: float  # seconds before the first retry; doubled for each further one

    def delay(self, attempt: int) -> float:
        """The pause after failed attempt number `attempt` (1 for the first)."""
        return float(min(self.base * 2 ** (attempt - 1), MAX_BACKOFF))


# A registry (its HTTP API, and the engine's logins and pushes to it) that is briefly away gets a few more tries,
# never minutes of them.
REGISTRY_BACKOFF = Backoff(retries=3, base=1.0)


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
    """`action(attempt)` until it returns; `TransientError` failures are retried, up to `backoff.retries` times
    (or the fewer a failure's own `retries` allows).

    `describe` heads each retry's log line (already masked); `mask` cleans the failure's text; `wait` pauses
    (an abort-aware wait ends early); `give_up(attempts, last)` builds the exception raised at the end. A failure
    carrying `retry_after` waits max(backoff delay, min(retry_after, MAX_RETRY_AFTER)).
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return action(attempt)
        except TransientError as failure:
            allowed = backoff.retries if failure.retries is None else min(backoff.retries, failure.retries)
            if attempt > allowed:
                raise give_up(attempt, failure) from None
            delay = _delay(backoff.delay(attempt), failure.retry_after)
            log.warning("%s: %s; retrying in %.2fs%s (attempt %d of %d)", describe, mask(str(failure)), delay,
                        _capped_note(failure.retry_after), attempt + 1, allowed + 1)
            wait(delay)


def _delay(backoff_delay: float, retry_after: float | None) -> float:
    """The backoff, lengthened to what the server asked for (within MAX_RETRY_AFTER); never shortened by it."""
    if retry_after is None:
        return backoff_delay
    return max(backoff_delay, min(retry_after, MAX_RETRY_AFTER))


def _capped_note(retry_after: float | None) -> str:
    """Says why the pause is shorter than the server asked for, so a reader of the log is not puzzled."""
    if retry_after is None or retry_after <= MAX_RETRY_AFTER:
        return ""
    return f" (the server asked for {retry_after:g}s; waiting at most {MAX_RETRY_AFTER:g}s)"

