from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from kling_pipeline.run.pacing import Reachability, SubmitLimiter, backoff_delay, next_poll_delay


class FixedDraw(random.Random):
    """A random source whose every draw is `value`."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeSleep:
    """The executor's sleep callback: advances the fake clock; True (stopped) on request."""

    def __init__(self, clock: FakeClock, stop_after: int | None = None,
                 slice_: float | None = None) -> None:
        self.clock = clock
        self.stop_after = stop_after
        self.slice = slice_
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> bool:
        self.waits.append(seconds)
        if self.stop_after is not None and len(self.waits) > self.stop_after:
            return True
        self.clock.now += seconds if self.slice is None else min(seconds, self.slice)
        await asyncio.sleep(0)
        return False


# -- backoff_delay --------------------------------------------------------------------------------

@pytest.mark.parametrize(("attempt", "full"), [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0),
                                               (4, 8.0), (6, 32.0), (7, 60.0), (30, 60.0)])
def test_backoff_grows_exponentially_up_to_the_cap(attempt: int, full: float) -> None:
    assert backoff_delay(attempt, 1.0, 60.0, rng=FixedDraw(0.0)) == pytest.approx(full / 2)
    assert backoff_delay(attempt, 1.0, 60.0, rng=FixedDraw(0.5)) == pytest.approx(full * 0.75)
    assert backoff_delay(attempt, 1.0, 60.0, rng=FixedDraw(1.0)) == pytest.approx(full)


def test_backoff_jitter_stays_in_the_upper_half() -> None:
    rng = random.Random(1234)
    for attempt in range(1, 12):
        full = min(30.0, 0.5 * 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, 0.5, 30.0, rng=rng) for _ in range(200)]
        assert all(full * 0.5 <= d <= full for d in delays)
        assert max(delays) - min(delays) > full * 0.3  # jittered, not one fixed value
    assert all(0.5 <= backoff_delay(1, 1.0, 60.0) <= 1.0 for _ in range(100))


@pytest.mark.parametrize("attempt", [1023, 1024, 1025, 1100, 5000, 10**6])
def test_backoff_is_capped_for_any_attempt(attempt: int) -> None:
    delay = backoff_delay(attempt, 1.0, 60.0, rng=FixedDraw(1.0))
    assert delay == pytest.approx(60.0)


@pytest.mark.parametrize("draw", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("retry_after", [2.5, 30.0, 59.0])
def test_backoff_is_never_shorter_than_retry_after(draw: float, retry_after: float) -> None:
    delay = backoff_delay(1, 1.0, 60.0, retry_after=retry_after, rng=FixedDraw(draw))
    assert retry_after <= delay <= retry_after + 0.1
    assert delay == pytest.approx(retry_after + 0.1 * draw)
    assert backoff_delay(1, 1.0, 60.0, retry_after=0.0, rng=FixedDraw(draw)) >= 0.0


@pytest.mark.parametrize("draw", [0.0, 1.0])
def test_retry_after_is_honoured_as_given_over_a_longer_backoff(draw: float) -> None:
    delay = backoff_delay(8, 1.0, 60.0, retry_after=2.0, rng=FixedDraw(draw))
    assert delay == pytest.approx(2.0 + 0.1 * draw)


def test_retry_after_gets_a_little_jitter_of_its_own() -> None:
    rng = random.Random(99)
    delays = {backoff_delay(1, 1.0, 60.0, retry_after=5.0, rng=rng) for _ in range(50)}
    assert all(5.0 <= d <= 5.1 for d in delays) and len(delays) > 1


# -- next_poll_delay ------------------------------------------------------------------------------

@pytest.mark.parametrize(("eta", "expected"), [
    (10.0, 8.0), (50.0, 40.0), (1.0, 3.0), (3.0, 3.0), (1000.0, 60.0), (75.0, 60.0),
])
def test_poll_uses_most_of_the_eta_within_floor_and_ceiling(eta: float, expected: float) -> None:
    assert next_poll_delay(eta, 0, 3.0, 60.0) == pytest.approx(expected)
    assert next_poll_delay(eta, 9, 3.0, 60.0) == pytest.approx(expected)  # polls do not matter


@pytest.mark.parametrize("eta", [None, 0.0, -5.0])
def test_poll_without_an_eta_is_at_the_floor_for_a_second_then_grows_with_the_wait(
        eta: float | None) -> None:
    overdue = [0.0, 0.5, 0.99, 1.0, 2.0, 10.0, 59.0, 120.0, 10.0**9]
    delays = [next_poll_delay(eta, seconds, 0.25, 30.0) for seconds in overdue]
    assert delays[:3] == [0.25, 0.25, 0.25]
    assert delays[3:6] == [0.5, 1.0, 5.0]
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert delays[-1] == 30.0 and max(delays) == 30.0


def test_a_stuck_task_is_polled_a_few_times_a_minute_not_four_times_a_second() -> None:
    """Simulate the schedule of a task that says eta 0 for an hour."""
    clock, polls = 0.0, 0
    while clock < 3600:
        clock += next_poll_delay(0.0, clock, 0.25, 30.0)
        polls += 1
    assert polls < 150  # 14,400 at the floor


# -- Reachability ---------------------------------------------------------------------------------

def test_a_server_never_reached_is_given_up_after_the_first_window() -> None:
    clock = FakeClock()
    reach = Reachability(10.0, 120.0, clock)
    assert not reach.failed() and reach.waited() == 0.0
    clock.now += 9.9
    assert not reach.failed()
    clock.now += 0.1
    assert reach.failed() and reach.waited() == pytest.approx(10.0)


def test_an_answer_resets_the_count_and_a_later_outage_gets_the_longer_window() -> None:
    clock = FakeClock()
    reach = Reachability(10.0, 120.0, clock)
    reach.failed()
    clock.now += 9.0
    reach.answered()
    assert reach.waited() == 0.0
    reach.failed()
    clock.now += 60.0
    assert not reach.failed()
    clock.now += 60.0
    assert reach.failed()


def test_a_slot_taken_by_a_submission_that_never_connected_is_given_back() -> None:
    clock = FakeClock()
    limiter = SubmitLimiter(2, clock=clock)
    limiter.record("e")
    limiter.record("e")
    assert limiter.wait_time("e") == pytest.approx(60.0)
    limiter.forget("e")
    assert limiter.wait_time("e") == 0.0
    limiter.forget("other")  # nothing taken there: nothing happens


# -- SubmitLimiter --------------------------------------------------------------------------------

def test_limiter_allows_per_minute_then_waits_for_the_oldest() -> None:
    clock = FakeClock()
    limiter = SubmitLimiter(3, clock=clock)
    for step in range(3):
        assert limiter.wait_time("a") == 0.0
        limiter.record("a")
        clock.now += 5 * (step + 1)  # sent at 1000, 1005, 1015; now 1030
    assert limiter.wait_time("a") == pytest.approx(30.0)
    clock.now = 1059.9
    assert limiter.wait_time("a") == pytest.approx(0.1)
    clock.now = 1060.0
    assert limiter.wait_time("a") == 0.0  # the first one is out of the window
    limiter.record("a")
    assert limiter.wait_time("a") == pytest.approx(5.0)  # next to leave: the one at 1005


def test_limiter_forgets_after_the_window() -> None:
    clock = FakeClock()
    limiter = SubmitLimiter(2, window=10.0, clock=clock)
    limiter.record("a")
    limiter.record("a")
    assert limiter.wait_time("a") == pytest.approx(10.0)
    clock.now += 10.0
    assert limiter.wait_time("a") == 0.0
    limiter.record("a")
    limiter.record("a")
    assert limiter.wait_time("a") == pytest.approx(10.0)


def test_acquire_takes_free_slots_then_sleeps_until_one_frees() -> None:
    clock = FakeClock()
    limiter = SubmitLimiter(3, clock=clock)
    sleep = FakeSleep(clock)

    async def main() -> list[bool]:
        return [await limiter.acquire("a", sleep) for _ in range(9)]

    assert asyncio.run(main()) == [True] * 9
    assert sleep.waits == [pytest.approx(60.0), pytest.approx(60.0)]
    assert clock.now == pytest.approx(1120.0)
    assert limiter.wait_time("a") == pytest.approx(60.0)


def test_pause_blocks_an_endpoint_and_only_that_one() -> None:
    clock = FakeClock()
    limiter = SubmitLimiter(20, clock=clock)
    limiter.pause("a", 30.0)
    assert limiter.wait_time("a") == pytest.approx(30.0)
    assert limiter.wait_time("b") == 0.0
    limiter.pause("a", 5.0)  # a shorter pause does not cut the longer one
    assert limiter.wait_time("a") == pytest.approx(30.0)
    clock.now += 30.0
    assert limiter.wait_time("a") == 0.0
    sleep = FakeSleep(clock)
    limiter.pause("a", 12.0)
    assert asyncio.run(limiter.acquire("a", sleep)) is True
    assert sleep.waits == [pytest.approx(12.0)]


def test_pause_and_a_full_window_take_the_longer_wait() -> None:
    clock = FakeClock()
    limiter = SubmitLimiter(1, clock=clock)
    limiter.record("a")
    limiter.pause("a", 5.0)
    assert limiter.wait_time("a") == pytest.approx(60.0)
    limiter.pause("a", 90.0)
    assert limiter.wait_time("a") == pytest.approx(90.0)


def test_endpoints_are_independent() -> None:
    clock = FakeClock()
    limiter = SubmitLimiter(2, clock=clock)
    sleep = FakeSleep(clock)

    async def main() -> None:
        for endpoint in ("kling-v3.0-pro-t2v", "kling-v3.0-std-i2v", "kling-v1.6-i2v"):
            assert await limiter.acquire(endpoint, sleep)
            assert await limiter.acquire(endpoint, sleep)

    asyncio.run(main())
    assert sleep.waits == []
    assert limiter.wait_time("kling-v3.0-pro-t2v") == pytest.approx(60.0)
    assert limiter.wait_time("kling-v3.0-pro-i2v") == 0.0


def test_acquire_returns_false_when_the_sleep_reports_a_stop() -> None:
    clock = FakeClock()
    limiter = SubmitLimiter(1, clock=clock)
    limiter.record("a")
    stopping = FakeSleep(clock, stop_after=0)
    assert asyncio.run(limiter.acquire("a", stopping)) is False
    assert stopping.waits == [pytest.approx(60.0)]
    assert clock.now == 1000.0
    assert limiter.wait_time("a") == pytest.approx(60.0)  # no slot was taken
    clock.now += 60.0
    assert limiter.wait_time("a") == 0.0


def test_an_early_wake_up_waits_again_and_a_later_stop_still_counts() -> None:
    clock = FakeClock()
    limiter = SubmitLimiter(1, clock=clock)
    limiter.record("a")
    woken_early = FakeSleep(clock, slice_=20.0)
    assert asyncio.run(limiter.acquire("a", woken_early)) is True
    assert woken_early.waits == [pytest.approx(60.0), pytest.approx(40.0), pytest.approx(20.0)]
    assert clock.now == pytest.approx(1060.0)
    stopping = FakeSleep(clock, stop_after=2, slice_=20.0)
    assert asyncio.run(limiter.acquire("a", stopping)) is False
    assert stopping.waits == [pytest.approx(60.0), pytest.approx(40.0), pytest.approx(20.0)]
    assert limiter.wait_time("a") == pytest.approx(20.0)


def test_concurrent_acquires_are_served_in_turn() -> None:
    clock = FakeClock()
    limiter = SubmitLimiter(2, clock=clock)
    sleep = FakeSleep(clock)
    granted: list[tuple[int, float]] = []

    async def one(n: int) -> None:
        assert await limiter.acquire("a", sleep)
        granted.append((n, clock.now))

    async def main() -> None:
        await asyncio.gather(*(one(n) for n in range(5)))

    asyncio.run(main())
    assert [n for n, _ in granted] == [0, 1, 2, 3, 4]
    assert [t for _, t in granted] == [1000.0, 1000.0, pytest.approx(1060.0),
                                       pytest.approx(1060.0), pytest.approx(1120.0)]


def test_a_retry_after_longer_than_the_cap_is_still_honoured() -> None:
    import random as _random

    delay = backoff_delay(1, base=1.0, cap=60.0, retry_after=120.0, rng=_random.Random(1))
    assert 120.0 <= delay <= 120.1


@pytest.mark.parametrize(("eta", "delay"), [(1.0, 0.25), (2.0, 1.0), (3.0, 2.0), (10.0, 8.0),
                                            (100.0, 30.0)])
def test_polls_tighten_over_the_last_second_of_a_whole_second_eta(eta: float,
                                                                  delay: float) -> None:
    assert next_poll_delay(eta, 0, floor=0.25, ceiling=30.0) == pytest.approx(delay)
