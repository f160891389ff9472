"""Reconnect backoff, replay pacing and the ack watchdog, with injected time and randomness."""

from __future__ import annotations

import pytest

from agent.settings import StreamSettings
from agent.stream.policy import (
    MAX_RETRY_AFTER_S,
    STABLE_AFTER_S,
    AckWatchdog,
    DrainWait,
    Failure,
    Pacer,
    ReconnectPolicy,
    check_ack,
    check_closed,
    check_ready,
    retry_after_s,
)

SETTINGS = StreamSettings(backoff_first_s=0.25, backoff_cap_s=30.0)


def top() -> float:
    return 0.999999


def test_full_jitter_doubles_from_first_up_to_cap() -> None:
    policy = ReconnectPolicy(SETTINGS, top)
    delays = [policy.on_failure(Failure.TRANSIENT, now=0.0).delay_s for _ in range(10)]
    bounds = [0.25 * 2**i for i in range(7)] + [30.0] * 3
    assert all(d is not None and b * 0.99 < d <= b for d, b in zip(delays, bounds, strict=True))
    zero = ReconnectPolicy(SETTINGS, lambda: 0.0)
    assert zero.on_failure(Failure.TRANSIENT, now=0.0).delay_s == 0.0


def test_backoff_resets_only_after_stable_connection_with_ack_progress() -> None:
    policy = ReconnectPolicy(SETTINGS, top)
    for _ in range(5):
        policy.on_failure(Failure.TRANSIENT, now=0.0)
    policy.on_connected(now=10.0)  # up for long but never acked: no reset
    policy.on_failure(Failure.TRANSIENT, now=100.0)
    assert policy.attempt == 6
    policy.on_connected(now=200.0)
    policy.on_progress()  # acked but died at once: no reset
    policy.on_failure(Failure.TRANSIENT, now=200.0 + STABLE_AFTER_S / 2)
    assert policy.attempt == 7
    policy.on_connected(now=300.0)
    policy.on_progress()
    decision = policy.on_failure(Failure.TRANSIENT, now=300.0 + STABLE_AFTER_S)
    assert decision.delay_s is not None and decision.delay_s <= 0.25 and policy.attempt == 1


def test_never_gives_up_on_transient_failures() -> None:
    policy = ReconnectPolicy(SETTINGS, top)
    assert all(policy.on_failure(Failure.TRANSIENT, now=0.0).delay_s is not None for _ in range(10_000))


def test_retry_after_is_honoured() -> None:
    policy = ReconnectPolicy(SETTINGS, top)
    assert policy.on_failure(Failure.TRANSIENT, now=0.0, retry_after=7.0).delay_s == 7.0


def test_401_relogs_in_and_dials_at_once_then_backs_off() -> None:
    policy = ReconnectPolicy(SETTINGS, top)
    first = policy.on_failure(Failure.UNAUTHORIZED, now=0.0)
    assert (first.delay_s, first.relogin) == (0.0, True)
    second = policy.on_failure(Failure.UNAUTHORIZED, now=0.0)
    assert second.relogin and second.delay_s is not None and second.delay_s > 0


def test_403_and_fatal_stop_dialling() -> None:
    assert ReconnectPolicy(SETTINGS, top).on_failure(Failure.FORBIDDEN, now=0.0).delay_s is None
    assert ReconnectPolicy(SETTINGS, top).on_failure(Failure.FATAL, now=0.0).delay_s is None


def test_pacer_limits_replay_to_speed_times_real_time() -> None:
    pacer = Pacer(speed=4.0, burst_s=1.0, now=0.0)
    now, sent = 0.0, 0.0
    while sent < 40.0:  # 40 s of backlog in 1 s messages
        now += pacer.delay(1.0, now)
        pacer.spend(1.0, now)
        sent += 1.0
    assert now >= (40.0 - 1.0) / 4.0 - 1e-9
    assert now <= 40.0 / 4.0


def test_pacer_never_delays_live_audio() -> None:
    pacer = Pacer(speed=4.0, burst_s=1.0, now=0.0)
    for i in range(1000):
        now = i * 0.1
        assert pacer.delay(0.1, now) == 0.0
        pacer.spend(0.1, now)


def test_watchdog_fires_only_without_ack_progress_while_outstanding() -> None:
    dog = AckWatchdog(10.0, now=0.0)
    assert not dog.expired(1000.0)  # nothing outstanding: idle for ever is fine
    dog.update(outstanding=True, progressed=False, now=1000.0)
    assert dog.deadline() == 1010.0
    dog.update(outstanding=True, progressed=False, now=1005.0)  # more writes do not move it
    dog.update(outstanding=True, progressed=True, now=1008.0)  # an ack does
    assert not dog.expired(1017.9) and dog.expired(1018.0)
    dog.update(outstanding=False, progressed=True, now=1018.0)
    assert dog.deadline() is None


def test_retry_after_is_a_floor_under_the_jittered_backoff() -> None:
    policy = ReconnectPolicy(SETTINGS, top)
    delays = [policy.on_failure(Failure.TRANSIENT, now=0.0, retry_after=-5.0).delay_s for _ in range(8)]
    assert delays == sorted(delays) and delays[-1] is not None and delays[-1] > 30.0 * 0.99  # grows as without it
    assert ReconnectPolicy(SETTINGS, lambda: 0.0).on_failure(Failure.TRANSIENT, 0.0, retry_after=7.0).delay_s == 7.0


@pytest.mark.parametrize(("value", "seconds"), [(-5, 0.0), (float("nan"), None), (float("inf"), MAX_RETRY_AFTER_S),
                                                (-float("inf"), 0.0), (1e12, MAX_RETRY_AFTER_S), ("12", 12.0),
                                                ("later", None), (True, None), (None, None), (3.5, 3.5)])
def test_retry_after_is_clamped(value: float | str | None, seconds: float | None) -> None:
    assert retry_after_s(value) == seconds
    assert MAX_RETRY_AFTER_S == 300.0


def test_nan_retry_after_leaves_the_backoff_alone() -> None:
    decision = ReconnectPolicy(SETTINGS, top).on_failure(Failure.TRANSIENT, 0.0, retry_after=float("nan"))
    assert decision.delay_s is not None and 0.0 < decision.delay_s <= 0.25


def test_claims_beyond_what_was_written_are_protocol_errors() -> None:
    assert check_ready(0, highest_written=-1) is None and check_ready(1, highest_written=-1) is not None
    assert check_ready(8, highest_written=7) is None and check_ready(9, highest_written=7) is not None
    assert check_ready(-1, highest_written=7) is not None
    assert check_ack(6, written_next=7) is None and check_ack(7, written_next=7) is not None
    assert check_closed(-1, written_next=0) is None and check_closed(0, written_next=0) is not None


def test_drain_wait_is_what_the_backlog_needs_extended_by_progress_and_capped() -> None:
    wait = DrainWait(replay_speed=4.0, grace_s=15.0, cap_s=300.0, now=0.0)
    assert wait.update(unconfirmed_s=40.0, reconnect_in_s=5.0, now=0.0) == 15.0 + 5.0 + 10.0
    assert wait.update(unconfirmed_s=40.0, reconnect_in_s=30.0, now=20.0) == 30.0  # no progress: no more time
    assert wait.update(unconfirmed_s=20.0, reconnect_in_s=0.0, now=25.0) == 25.0 + 15.0 + 5.0  # progress
    assert wait.update(unconfirmed_s=1.0, reconnect_in_s=0.0, now=26.0) == 45.0  # never shortened
    capped = DrainWait(replay_speed=4.0, grace_s=15.0, cap_s=60.0, now=100.0)
    assert capped.update(unconfirmed_s=600.0, reconnect_in_s=0.0, now=100.0) == 160.0
