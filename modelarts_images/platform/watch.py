"""Watching a training job: its phases polled with back-off, each change said with the time spent, and a job
stopped (terminate) whenever the tool stops watching before the job finished: on its timeout, Ctrl-C or SIGTERM.
A job is billed while it runs; none is left running because the tool went away."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType

from modelarts_images.cloud.api import CloudError, JobState, ModelArts, Phase
from modelarts_images.errors import Interrupted, PlatformError


@dataclass(frozen=True, kw_only=True)
class PollSchedule:
    """About 5 s between status calls, growing to 30 s: never more than 12 calls a minute."""

    first: float = 5.0
    growth: float = 1.5
    longest: float = 30.0
    transient_retries: int = 5  # status calls in a row that may fail with 429 or 5xx before the watch gives up
    still: float = 60.0  # seconds between "still Running" lines while the phase does not change

    def delays(self) -> Iterator[float]:
        delay = self.first
        while True:
            yield delay
            delay = min(delay * self.growth, self.longest)


@dataclass(frozen=True, kw_only=True)
class Pace:
    """How a watch waits: its schedule, its clock and its sleep (tests pass a clock that only counts)."""

    schedule: PollSchedule = PollSchedule()
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


REAL_TIME = Pace()


@dataclass(frozen=True, kw_only=True)
class PhaseChange:
    phase: Phase
    at: float  # seconds since the watch began
    after: Phase | None  # the phase before it
    spent: float  # seconds in that phase (as seen by the polls)


@dataclass(frozen=True, kw_only=True)
class Watched:
    state: JobState  # the last one seen: finished
    changes: tuple[PhaseChange, ...]
    calls: int  # status calls made
    seconds: float

    def time_in(self, phase: Phase) -> float:
        """Seconds spent in `phase`, as the polls saw it."""
        following = {change.after: change.spent for change in self.changes if change.after is not None}
        return following.get(phase, 0.0)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises Interrupted in the watching thread, so that the job can be stopped before the tool ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_job(api: ModelArts, state: JobState) -> str:
    """Terminate the job; what happened, for the message."""
    try:
        api.stop(state.id)
    except CloudError as error:
        return f"stopping it failed ({error} [{error.code}]): stop it in the console"
    return "stopped it (terminate)"


def watch(api: ModelArts, first: JobState, *, timeout: float, say: Callable[[str], None],
          pace: Pace = REAL_TIME) -> Watched:
    """Poll the job until it finishes; PlatformError after `timeout` seconds, or when the status calls keep
    failing, with the job stopped. Ctrl-C and SIGTERM stop the job too, then go on up."""
    schedule, clock, sleep = pace.schedule, pace.clock, pace.sleep
    start = clock()
    state, changes, calls, failures = first, [PhaseChange(phase=first.phase, at=0.0, after=None, spent=0.0)], 0, 0
    since = said = start
    say(f"{state.name}: {state.phase}")
    delays = schedule.delays()
    try:
        with sigterm_interrupts():
            while not state.phase.finished:
                if clock() - start > timeout:
                    outcome = stop_job(api, state)
                    raise PlatformError(f"training job {state.name} ({state.id}) was still {state.phase} after "
                                        f"{timeout:g} s (--job-timeout); {outcome}")
                sleep(min(next(delays), max(timeout - (clock() - start), 0.0) + 0.001))
                try:
                    calls += 1
                    seen = api.job(state.id)
                    failures = 0
                except CloudError as error:
                    failures += 1
                    if not error.transient or failures > schedule.transient_retries:
                        outcome = stop_job(api, state)
                        raise PlatformError(f"training job {state.name} ({state.id}): its status could not be "
                                            f"read: {error} [{error.code}]; {outcome}") from error
                    continue
                if seen.phase is not state.phase:
                    now = clock()
                    changes.append(PhaseChange(phase=seen.phase, at=now - start, after=state.phase,
                                               spent=now - since))
                    say(f"{seen.name}: {state.phase} -> {seen.phase} after {now - since:.0f} s")
                    since = said = now
                elif clock() - said >= schedule.still:  # a long queue or run shows it is alive
                    said = clock()
                    say(f"{seen.name}: still {seen.phase}, {said - since:.0f} s so far")
                state = seen
    except (KeyboardInterrupt, Interrupted):
        if not state.phase.finished:
            say(f"{state.name}: interrupted while {state.phase}: {stop_job(api, state)}")
        raise
    return Watched(state=state, changes=tuple(changes), calls=calls, seconds=clock() - start)

