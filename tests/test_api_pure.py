"""Pure parts of the MediSync client: status/envelope mapping, Retry-After, secrets, the multipart body."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import os
import pickle
from pathlib import Path

import pytest

from agent.api.multipart import FilePart, LocalFile
from agent.api.responses import convert, decode_document, error_for_status
from agent.api.secret import Secret, load_credentials, read_secret_file
from agent.backoff import parse_retry_after
from agent.errors import (
    AlreadyExistsError,
    AuthError,
    ConfigError,
    DamagedRecordingError,
    EnvelopeError,
    NotFoundError,
    RateLimitError,
    ResponseError,
    ServerError,
    SubscriptionError,
    UploadTooLargeError,
)
from agent.settings import ApiSettings

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("status", "cls"),
    [(401, AuthError), (403, SubscriptionError), (404, NotFoundError), (409, AlreadyExistsError),
     (413, UploadTooLargeError), (429, RateLimitError), (500, ServerError), (503, ServerError), (400, EnvelopeError)],
)
def test_status_maps_to_typed_error(status: int, cls: type[Exception]) -> None:
    error = error_for_status(status, {}, b'{"success": false, "error": "nope"}', endpoint="GET x", now=NOW)
    assert type(error) is cls
    assert "GET x" in str(error)


def test_success_status_is_no_error() -> None:
    assert error_for_status(201, {}, b"", endpoint="GET x", now=NOW) is None


def test_already_exists_recognised_by_text_whatever_the_status() -> None:
    error = error_for_status(400, {}, b'{"success": false, "error": "Recording already exists"}', endpoint="e", now=NOW)
    assert isinstance(error, AlreadyExistsError)
    with pytest.raises(AlreadyExistsError):
        decode_document(b'{"success": false, "error": "Recording ALREADY exists"}', endpoint="e")


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("7", NOW) == 7.0
    assert parse_retry_after(" 1.5 ", NOW) == 1.5
    assert parse_retry_after("-3", NOW) == 0.0
    date = email.utils.formatdate(NOW + 42, usegmt=True)
    assert parse_retry_after(date, NOW) == pytest.approx(42.0)
    assert parse_retry_after(email.utils.formatdate(NOW - 10, usegmt=True), NOW) == 0.0
    assert parse_retry_after(None, NOW) is None
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("nan", NOW) is None


def test_rate_limit_error_carries_retry_after() -> None:
    error = error_for_status(429, {"retry-after": "12"}, b"", endpoint="e", now=NOW)
    assert isinstance(error, RateLimitError)
    assert error.retry_after == 12.0
    assert "retry after 12 s" in str(error)


def test_envelope_false_carries_server_text() -> None:
    with pytest.raises(EnvelopeError, match="Invalid authentication token"):
        decode_document(b'{"success": false, "error": "Invalid authentication token"}', endpoint="e")


@pytest.mark.parametrize("body", [b'{"success": tru', b"[1, 2]", b'"text"', b"", b'{"success": "yes"}'])
def test_malformed_or_misshapen_documents(body: bytes) -> None:
    with pytest.raises(ResponseError):
        decode_document(body, endpoint="e")


def test_wrong_shape_names_the_field_not_the_value() -> None:
    from agent.api.models import Patient

    with pytest.raises(ResponseError, match=r"_id") as info:
        convert({"firstName": "Jane"}, Patient, endpoint="e", what="data")
    assert "Jane" not in str(info.value)


def test_server_text_is_one_bounded_line() -> None:
    error = error_for_status(500, {}, b'{"error": "line1\\nline2 ' + b"x" * 500 + b'"}', endpoint="e", now=NOW)
    text = str(error)
    assert "\n" not in text
    assert len(text) < 300


# --- secrets ---------------------------------------------------------------------------------------------------


def test_secret_is_masked_everywhere() -> None:
    secret = Secret("hunter2-password")
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r}", f"{secret:>20}", repr([secret]),
                  repr({"password": secret})):
        assert "hunter2" not in shown
    assert secret.reveal() == "hunter2-password"
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_credentials_repr_masks_password() -> None:
    creds = load_credentials(ApiSettings(email="dr@example.org"), {"MEDISYNC_PASSWORD": "s3cret-pw"})
    assert "s3cret-pw" not in repr(creds)
    assert creds.password.reveal() == "s3cret-pw"


def test_password_file_readable_by_others_refused(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text("s3cret-pw\n")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="accessible by group or others") as info:
        load_credentials(ApiSettings(email="dr@example.org", password_file=str(path)), {})
    assert "s3cret-pw" not in str(info.value)
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_secret_file(path, "password")
    os.chmod(path, 0o600)
    assert read_secret_file(path, "password").reveal() == "s3cret-pw"


def test_password_sources_in_order(tmp_path: Path) -> None:
    cred_dir = tmp_path / "creds"
    cred_dir.mkdir()
    (cred_dir / "password").write_text("from-systemd")
    os.chmod(cred_dir / "password", 0o400)
    env = {"CREDENTIALS_DIRECTORY": str(cred_dir), "MEDISYNC_PASSWORD": "from-env"}
    assert load_credentials(ApiSettings(email="a@b"), env).password.reveal() == "from-systemd"
    assert load_credentials(ApiSettings(email="a@b"), {"MEDISYNC_PASSWORD": "from-env"}).password.reveal() == "from-env"
    with pytest.raises(ConfigError, match="no MediSync password"):
        load_credentials(ApiSettings(email="a@b"), {})
    with pytest.raises(ConfigError, match="e-mail"):
        load_credentials(ApiSettings(), {"MEDISYNC_PASSWORD": "x"})
    with pytest.raises(ConfigError, match="does not exist"):
        load_credentials(ApiSettings(email="a@b", password_file=str(tmp_path / "missing")), {})


# --- multipart body --------------------------------------------------------------------------------------------


def test_multipart_body_is_exact_and_reports_progress(tmp_path: Path) -> None:
    path = tmp_path / "visit.wav"
    data = os.urandom(700_000)
    path.write_bytes(data)
    part = FilePart("audio", LocalFile(path, len(data)), boundary="BOUNDARY")
    seen: list[tuple[int, int]] = []

    async def collect() -> bytes:
        return b"".join([chunk async for chunk in part.body(lambda sent, total: seen.append((sent, total)))])

    body = asyncio.run(collect())
    assert len(body) == part.content_length
    head, _, rest = body.partition(b"\r\n\r\n")
    assert b'name="audio"; filename="recording.wav"' in head
    assert b"Content-Type: audio/wav" in head
    assert rest == data + b"\r\n--BOUNDARY--\r\n"
    assert seen[-1] == (len(data), len(data))
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)
    assert part.content_type == "multipart/form-data; boundary=BOUNDARY"


def test_multipart_body_withholds_its_end_when_the_content_is_not_the_recorded_digest(tmp_path: Path) -> None:
    path = tmp_path / "visit.wav"
    data = os.urandom(300_000)
    path.write_bytes(data)
    right = FilePart("audio", LocalFile(path, len(data), hashlib.sha256(data).hexdigest()), boundary="B")
    wrong = FilePart("audio", LocalFile(path, len(data), "0" * 64), boundary="B")
    sent: list[bytes] = []

    async def collect(part: FilePart) -> bytes:
        sent.clear()
        async for chunk in part.body():
            sent.append(chunk)
        return b"".join(sent)

    assert asyncio.run(collect(right)).endswith(b"\r\n--B--\r\n")
    with pytest.raises(DamagedRecordingError, match="differs from the digest"):
        asyncio.run(collect(wrong))
    assert b"".join(sent).endswith(data) and len(b"".join(sent)) < wrong.content_length  # never complete


# --- where the answer sits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [
        {"success": True, "data": {"active": False, "plan": "p"}},
        {"success": True, "subscription": {"active": False, "plan": "p"}},
        {"success": True, "data": {"subscription": {"active": False, "plan": "p"}}},
        {"success": True, "active": False, "plan": "p"},
        {"active": False, "plan": "p"},  # no envelope at all
    ],
)
def test_unwrap_finds_the_object_in_every_documented_place(doc: dict[str, object]) -> None:
    from agent.api.models import Subscription
    from agent.api.responses import unwrap

    found = unwrap(doc, Subscription, keys=("subscription",), endpoint="e", what="subscription")
    assert (found.active, found.plan) == (False, "p")


def test_unwrap_never_takes_a_bare_envelope_for_an_all_optional_object() -> None:
    from agent.api.models import Subscription
    from agent.api.responses import unwrap

    for doc in ({"success": True}, {"success": True, "data": {}}, {"success": True, "data": "active"}):
        with pytest.raises(ResponseError, match=r"response has no subscription \(looked under 'data', "
                                                r"'subscription', the top level\)"):  # fmt: skip
            unwrap(doc, Subscription, keys=("subscription",), endpoint="e", what="subscription")


def test_unwrap_reads_lists_under_data_a_key_or_as_a_bare_array() -> None:
    from agent.api.models import Note
    from agent.api.responses import unwrap

    notes = [{"_id": "n1", "notes": "text"}]
    for doc in ({"data": notes}, {"notes": notes}, notes, {"data": {"notes": notes}}):
        assert [n.id for n in unwrap(doc, list[Note], keys=("notes",), endpoint="e", what="notes")] == ["n1"]


def test_unwrap_mismatch_names_the_path_never_the_value() -> None:
    from agent.api.models import Appointment
    from agent.api.responses import unwrap

    with pytest.raises(ResponseError, match=r"appointment not as documented .*\$\._id") as info:
        unwrap({"data": {"_id": 42, "name": "Jane Doe"}}, Appointment, keys=("appointment",), endpoint="e",
               what="appointment")  # fmt: skip
    assert "Jane" not in str(info.value) and "42" not in str(info.value)


@pytest.mark.parametrize(("body", "text"), [(b"", "response is empty"), (b"  <html>x</html>", "HTML page"),
                                            (b"OK", "not valid JSON")])  # fmt: skip
def test_non_json_body_is_described_not_quoted(body: bytes, text: str) -> None:
    with pytest.raises(ResponseError, match=text) as info:
        decode_document(body, endpoint="e")
    assert "html>x" not in str(info.value)
