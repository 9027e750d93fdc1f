"""shared/retry.py: the one retry loop (backoff, cap, attempts, give_up, masked log lines), without sleeping."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import pytest

from modelarts_images.shared import retry

LOGGER = "tests.unit.test_retry"
log = logging.getLogger(LOGGER)


class GaveUpError(Exception):
    def __init__(self, attempts: int, last: retry.TransientError) -> None:
        super().__init__(f"gave up after {attempts}: {last}")
        self.attempts = attempts
        self.last = last


class Flaky:
    """An action that fails with TransientError('failure N') on its first `failures` attempts, then answers."""

    def __init__(self, failures: int, answer: str = "done") -> None:
        self.failures = failures
        self.answer = answer
        self.attempts: list[int] = []
        self.raised: list[retry.TransientError] = []

    def __call__(self, attempt: int) -> str:
        self.attempts.append(attempt)
        if len(self.attempts) <= self.failures:
            failure = retry.TransientError(f"failure {attempt}")
            self.raised.append(failure)
            raise failure
        return self.answer


def run(action: Flaky, backoff: retry.Backoff, waits: list[float], gave_up: list[tuple[int, str]] | None = None
        ) -> str:
    def give_up(attempts: int, last: retry.TransientError) -> Exception:
        if gave_up is not None:
            gave_up.append((attempts, str(last)))
        return GaveUpError(attempts, last)

    return retry.call(action, backoff=backoff, describe="GET thing", give_up=give_up, log=log, wait=waits.append)


def retry_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


# --------------------------------------------------------------------------------------------------------------
# Backoff


def test_delay_doubles_from_the_base() -> None:
    assert [retry.Backoff(retries=5, base=1.0).delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert [retry.Backoff(retries=3, base=0.25).delay(n) for n in range(1, 4)] == [0.25, 0.5, 1.0]


def test_delay_is_capped_at_30_seconds() -> None:
    assert retry.MAX_BACKOFF == 30.0
    backoff = retry.Backoff(retries=10, base=1.0)
    assert backoff.delay(5) == 16.0 and backoff.delay(6) == 30.0 and backoff.delay(7) == 30.0
    assert backoff.delay(200) == 30.0  # no overflow however long a loop ran
    assert retry.Backoff(retries=1, base=15.0).delay(2) == 30.0
    assert retry.Backoff(retries=1, base=45.0).delay(1) == 30.0  # even the first pause


def test_delay_is_a_float() -> None:
    delay = retry.Backoff(retries=1, base=1).delay(1)
    assert type(delay) is float and delay == 1.0


# --------------------------------------------------------------------------------------------------------------
# call


def test_an_answer_at_once_neither_waits_nor_logs(caplog: pytest.LogCaptureFixture) -> None:
    action = Flaky(0)
    waits: list[float] = []
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert run(action, retry.Backoff(retries=3, base=1.0), waits) == "done"
    assert action.attempts == [1] and waits == [] and retry_lines(caplog) == []


def test_transient_failures_are_retried_until_an_answer(caplog: pytest.LogCaptureFixture) -> None:
    action = Flaky(2, answer="third time")
    waits: list[float] = []
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert run(action, retry.Backoff(retries=3, base=0.5), waits) == "third time"
    assert action.attempts == [1, 2, 3]
    assert waits == [0.5, 1.0]
    assert retry_lines(caplog) == ["GET thing: failure 1; retrying in 0.50s (attempt 2 of 4)",
                                   "GET thing: failure 2; retrying in 1.00s (attempt 3 of 4)"]
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == LOGGER)


@pytest.mark.parametrize("retries", [0, 1, 2, 5])
def test_retries_are_attempts_after_the_first(retries: int) -> None:
    action = Flaky(100)
    waits: list[float] = []
    gave_up: list[tuple[int, str]] = []
    with pytest.raises(GaveUpError) as caught:
        run(action, retry.Backoff(retries=retries, base=0.1), waits, gave_up)
    assert action.attempts == list(range(1, retries + 2))
    assert len(waits) == retries  # no pause after the last attempt
    # give_up gets the number of attempts made and the last failure; what it returns is raised, alone.
    assert gave_up == [(retries + 1, f"failure {retries + 1}")]
    assert caught.value.attempts == retries + 1 and caught.value.last is action.raised[-1]
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_the_last_allowed_attempt_may_still_answer() -> None:
    action = Flaky(2)
    waits: list[float] = []
    assert run(action, retry.Backoff(retries=2, base=0.1), waits) == "done"
    assert action.attempts == [1, 2, 3] and len(waits) == 2


def test_other_errors_pass_straight_through(caplog: pytest.LogCaptureFixture) -> None:
    refused = ValueError("refused: no retry can help")
    attempts: list[int] = []
    waits: list[float] = []
    gave_up: list[int] = []

    def action(attempt: int) -> str:
        attempts.append(attempt)
        raise refused

    def give_up(count: int, last: retry.TransientError) -> Exception:
        gave_up.append(count)
        return GaveUpError(count, last)

    with caplog.at_level(logging.DEBUG, logger=LOGGER), pytest.raises(ValueError) as caught:
        retry.call(action, backoff=retry.Backoff(retries=5, base=1.0), describe="x", give_up=give_up, log=log,
                   wait=waits.append)
    assert caught.value is refused
    assert attempts == [1] and waits == [] and gave_up == [] and retry_lines(caplog) == []


def test_an_other_error_after_a_transient_one_ends_the_loop() -> None:
    attempts: list[int] = []
    waits: list[float] = []

    def action(attempt: int) -> str:
        attempts.append(attempt)
        if attempt == 1:
            raise retry.TransientError("busy")
        raise KeyError("gone")

    with pytest.raises(KeyError, match="gone"):
        retry.call(action, backoff=retry.Backoff(retries=5, base=1.0), describe="x",
                   give_up=lambda n, last: GaveUpError(n, last), log=log, wait=waits.append)
    assert attempts == [1, 2] and waits == [1.0]


def test_the_mask_cleans_the_logged_failure(caplog: pytest.LogCaptureFixture) -> None:
    def action(attempt: int) -> str:
        if attempt == 1:
            raise retry.TransientError("GET https://u:s3cret@h/x: 503 (s3cret)")
        return "ok"

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert retry.call(action, backoff=retry.Backoff(retries=1, base=0.25), describe="GET https://h/x",
                          give_up=lambda n, last: GaveUpError(n, last), log=log, wait=lambda _: None,
                          mask=lambda text: text.replace("s3cret", "***")) == "ok"
    assert retry_lines(caplog) == ["GET https://h/x: GET https://u:***@h/x: 503 (***); retrying in 0.25s "
                                   "(attempt 2 of 2)"]
    assert "s3cret" not in caplog.text


def test_a_failure_worth_fewer_retries_stops_there_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    attempts: list[int] = []
    waits: list[float] = []
    gave_up: list[tuple[int, str]] = []

    def refused(attempt: int) -> str:
        attempts.append(attempt)
        raise retry.TransientError("h:1 refused the connection", retries=1, final="h:1 refused the connection (...)")

    def give_up(count: int, last: retry.TransientError) -> Exception:
        gave_up.append((count, last.final))
        return GaveUpError(count, last)

    with caplog.at_level(logging.DEBUG, logger=LOGGER), pytest.raises(GaveUpError):
        retry.call(refused, backoff=retry.Backoff(retries=5, base=0.25), describe="GET h", give_up=give_up, log=log,
                   wait=waits.append)
    assert attempts == [1, 2] and waits == [0.25]
    # The log line is the short cause; the final word is the whole one, for the message.
    assert retry_lines(caplog) == ["GET h: h:1 refused the connection; retrying in 0.25s (attempt 2 of 2)"]
    assert gave_up == [(2, "h:1 refused the connection (...)")]


def test_a_failure_worth_no_retry_goes_to_give_up_at_once() -> None:
    waits: list[float] = []

    def once(attempt: int) -> str:
        raise retry.TransientError("no", retries=0)

    with pytest.raises(GaveUpError) as caught:
        retry.call(once, backoff=retry.Backoff(retries=5, base=1.0), describe="x",
                   give_up=lambda n, last: GaveUpError(n, last), log=log, wait=waits.append)
    assert caught.value.attempts == 1 and waits == [] and caught.value.last.final == "no"


def test_the_wait_gets_each_delay_capped() -> None:
    action = Flaky(100)
    waits: list[float] = []
    with pytest.raises(GaveUpError):
        run(action, retry.Backoff(retries=8, base=4.0), waits)
    assert waits == [4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0, 30.0]


# --------------------------------------------------------------------------------------------------------------
# Retry-After


class Limited:
    """An action answered 'HTTP 429' with the given Retry-After seconds, one per failing attempt, then 'done'."""

    def __init__(self, *retry_after: float | None) -> None:
        self.retry_after = list(retry_after)

    def __call__(self, attempt: int) -> str:
        if attempt <= len(self.retry_after):
            raise retry.TransientError("HTTP 429 Too Many Requests", retry_after=self.retry_after[attempt - 1])
        return "done"


def test_a_retry_after_longer_than_the_backoff_is_waited_and_a_shorter_one_is_not() -> None:
    waits: list[float] = []
    call = retry.call(Limited(5.0, 0.1, None), backoff=retry.Backoff(retries=3, base=0.5), describe="GET thing",
                      give_up=GaveUpError, log=log, wait=waits.append)
    assert call == "done"
    assert waits == [5.0, 1.0, 2.0]  # max(backoff, Retry-After): the server's wish never shortens the backoff


def test_a_retry_after_is_capped_and_the_log_says_so(caplog: pytest.LogCaptureFixture) -> None:
    waits: list[float] = []
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        retry.call(Limited(86_400.0), backoff=retry.Backoff(retries=1, base=0.5), describe="GET thing",
                   give_up=GaveUpError, log=log, wait=waits.append)
    assert retry.MAX_RETRY_AFTER == 60.0
    assert waits == [60.0]  # a hostile header cannot park the tool for a day
    assert retry_lines(caplog) == ["GET thing: HTTP 429 Too Many Requests; retrying in 60.00s (the server asked for "
                                   "86400s; waiting at most 60s) (attempt 2 of 2)"]


def test_transient_error_without_retry_after() -> None:
    failure = retry.TransientError("cut")
    assert failure.retry_after is None and str(failure) == "cut"


NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(("header", "seconds"), [
    ("120", 120.0),
    (" 7 ", 7.0),
    ("0", 0.0),
    ("Mon, 01 Jan 2024 12:01:30 GMT", 90.0),  # IMF-fixdate
    ("Monday, 01-Jan-24 12:00:10 GMT", 10.0),  # RFC 850, obsolete but allowed
    ("Mon Jan  1 12:00:20 2024", 20.0),  # asctime, without a zone: GMT
    ("Mon, 01 Jan 2024 11:00:00 GMT", 0.0),  # already past: no pause of its own
    ("9" * 5000, 1e10),  # far too long to be meant; no crash on a number int() refuses
    (None, None),
    ("", None),
    ("soon", None),
    ("-5", None),
    ("1.5", None),
    ("٣", None),  # a digit, but not an ASCII one
])
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert retry.parse_retry_after(header, now=NOW) == seconds
