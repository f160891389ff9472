"""Upload policy tables: every decision branch, pure (no disk, no event loop)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.archive.upload_policy import (
    ACCOUNT_WIDE,
    RETRY_AFTER_MAX_S,
    Block,
    DeadLetter,
    Decision,
    ErrorKind,
    Failure,
    ItemState,
    Retry,
    after_failure,
    after_success,
    classify,
    is_due,
    retention_expired,
)
from agent.errors import (
    AlreadyExistsError,
    ApiError,
    AuthError,
    EnvelopeError,
    NotFoundError,
    RateLimitError,
    RecordingMismatchError,
    ServerError,
    SubscriptionError,
    TransportError,
    UploadTooLargeError,
    WrongAppointmentError,
)
from agent.settings import UploadSettings

S = UploadSettings(backoff_first_s=5.0, backoff_cap_s=900.0, retention_hours=24.0)
NOW = 1_800_000_000.0


def top() -> float:
    """An rng at the top of its range (just under 1): the delay equals the ceiling."""
    return 0.999999


def decide(failure: Failure, attempts: int = 1, rng: Callable[[], float] = top) -> Decision:
    return after_failure(failure, attempts=attempts, now=NOW, rng=rng, settings=S)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (AuthError("x", status=401), ErrorKind.AUTH),
        (SubscriptionError("x", status=403), ErrorKind.SUBSCRIPTION),
        (NotFoundError("x", status=404), ErrorKind.NOT_FOUND),
        (RateLimitError("x", retry_after=7.0), ErrorKind.RATE_LIMITED),
        (ServerError("x", status=503), ErrorKind.SERVER),
        (TransportError("x"), ErrorKind.TRANSPORT),
        (RecordingMismatchError("x"), ErrorKind.MISMATCH),
        (UploadTooLargeError("x"), ErrorKind.TOO_LARGE),
        (WrongAppointmentError("x", status=200), ErrorKind.WRONG_APPOINTMENT),
        (EnvelopeError("x", status=200), ErrorKind.OTHER),
        (AlreadyExistsError("x", status=409), ErrorKind.OTHER),  # the client resolves it; unresolved is transient
        (ApiError("x"), ErrorKind.OTHER),
    ],
)
def test_classify_maps_every_api_error(exc: ApiError, kind: ErrorKind) -> None:
    failure = classify(exc)
    assert failure.kind is kind
    assert failure.status == exc.status
    assert failure.retry_after == (7.0 if kind is ErrorKind.RATE_LIMITED else None)


def test_failure_text_is_fixed_never_server_words() -> None:
    failure = classify(ServerError("Patient Jane Doe's file broke the parser", status=500))
    assert failure.text() == "MediSync server error (HTTP 500)"
    assert "Jane" not in failure.text()


@pytest.mark.parametrize(
    ("attempts", "ceiling"), [(1, 5.0), (2, 10.0), (3, 20.0), (8, 640.0), (9, 900.0), (500, 900.0)]
)
def test_backoff_is_full_jitter_exponential_capped(attempts: int, ceiling: float) -> None:
    failure = Failure(ErrorKind.SERVER, 500)
    assert decide(failure, attempts=attempts, rng=lambda: 0.0) == Retry(at=NOW)
    assert decide(failure, attempts=attempts, rng=lambda: 0.5) == Retry(at=pytest.approx(NOW + ceiling / 2))
    assert decide(failure, attempts=attempts, rng=top) == Retry(at=pytest.approx(NOW + ceiling, rel=1e-5))


@pytest.mark.parametrize("kind", [ErrorKind.SERVER, ErrorKind.TRANSPORT, ErrorKind.OTHER])
def test_transient_failures_retry_after_backoff(kind: ErrorKind) -> None:
    assert decide(Failure(kind), attempts=3, rng=lambda: 0.25) == Retry(at=NOW + 5.0)  # 0.25 * 20


def test_rate_limit_retry_after_is_a_floor() -> None:
    assert decide(Failure(ErrorKind.RATE_LIMITED, 429, retry_after=42.0), rng=lambda: 0.1) == Retry(at=NOW + 42.0)
    # A longer backoff wins over a short Retry-After.
    assert decide(Failure(ErrorKind.RATE_LIMITED, 429, retry_after=1.0), attempts=5) == Retry(
        at=pytest.approx(NOW + 80.0)
    )
    # Without Retry-After: plain backoff.
    assert decide(Failure(ErrorKind.RATE_LIMITED, 429), rng=lambda: 0.5) == Retry(at=NOW + 2.5)


def test_absurd_retry_after_is_bounded() -> None:
    decision = decide(Failure(ErrorKind.RATE_LIMITED, 429, retry_after=1e12), rng=lambda: 0.0)
    assert decision == Retry(at=NOW + RETRY_AFTER_MAX_S)
    assert decide(Failure(ErrorKind.RATE_LIMITED, 429, retry_after=-5), rng=lambda: 0.0) == Retry(at=NOW)


def test_401_backs_off_the_http_client_already_logged_in_again() -> None:
    assert decide(Failure(ErrorKind.AUTH, 401), rng=lambda: 0.5) == Retry(at=NOW + 2.5)


def test_403_blocks_and_rechecks_at_the_cap() -> None:
    assert decide(Failure(ErrorKind.SUBSCRIPTION, 403)) == Block(at=NOW + 900.0)
    assert decide(Failure(ErrorKind.SUBSCRIPTION, 403), attempts=40) == Block(at=NOW + 900.0)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        (ErrorKind.NOT_FOUND, "appointment not found on MediSync"),
        (ErrorKind.MISMATCH, "MediSync holds a different recording for this appointment"),
        (ErrorKind.TOO_LARGE, "recording over the upload size limit"),
        (ErrorKind.MISSING_AUDIO, "local audio file missing or changed"),
        (ErrorKind.WRONG_APPOINTMENT, "MediSync's upload answer names another appointment"),
    ],
)
def test_permanent_failures_dead_letter_with_reason(kind: ErrorKind, reason: str) -> None:
    assert decide(Failure(kind)) == DeadLetter(reason=reason)


def test_account_wide_kinds() -> None:
    assert {ErrorKind.NOT_FOUND, ErrorKind.MISMATCH, ErrorKind.TOO_LARGE, ErrorKind.OTHER}.isdisjoint(ACCOUNT_WIDE)
    assert {ErrorKind.SERVER, ErrorKind.RATE_LIMITED, ErrorKind.SUBSCRIPTION, ErrorKind.AUTH} <= ACCOUNT_WIDE


def test_success_keeps_audio_for_retention() -> None:
    done = after_success(NOW, S)
    assert (done.uploaded_at, done.delete_at) == (NOW, NOW + 24 * 3600)


@pytest.mark.parametrize(
    ("state", "uploaded_at", "now", "expired"),
    [
        (ItemState.DONE, NOW, NOW + 24 * 3600 - 1, False),
        (ItemState.DONE, NOW, NOW + 24 * 3600, True),
        (ItemState.DONE, None, NOW + 1e9, False),
        (ItemState.PENDING, NOW, NOW + 1e9, False),
        (ItemState.BLOCKED, NOW, NOW + 1e9, False),
        (ItemState.DEAD, NOW, NOW + 1e9, False),
    ],
)
def test_retention_only_after_confirmed_upload(
    state: ItemState, uploaded_at: float | None, now: float, expired: bool
) -> None:
    assert retention_expired(state, uploaded_at, now, S) is expired


@pytest.mark.parametrize(
    ("state", "next_at", "due"),
    [
        (ItemState.PENDING, NOW, True),
        (ItemState.PENDING, NOW - 10, True),
        (ItemState.PENDING, NOW + 10, False),
        (ItemState.BLOCKED, NOW + 10, False),
        (ItemState.BLOCKED, NOW, True),
        (ItemState.DONE, NOW - 10, False),
        (ItemState.DEAD, NOW - 10, False),
        # Next attempt further ahead than any delay we set: the clock went back; try now.
        (ItemState.PENDING, NOW + max(RETRY_AFTER_MAX_S, S.backoff_cap_s) + 1, True),
    ],
)
def test_is_due(state: ItemState, next_at: float, due: bool) -> None:
    assert is_due(state, next_at, NOW, S) is due
