"""One exception tree for the whole agent.

Every error a person can see derives from :class:`AgentError`. Its ``str()`` is one line meant for that
person (never a token, password or patient detail) and ``exit_code`` is what the CLI exits with.
Third-party exceptions (OSError from the file system, httpx and websockets errors, PortAudio errors) are
translated into these at the adapter boundary, so callers catch one family.

    AgentError
    ├── ConfigError                 bad configuration (exit 78, EX_CONFIG)
    ├── InputError                  bad input a person gave: missing file, not a WAV, bad encoding (exit 65)
    │   └── NoAudioError            a visit ended without capturing any audio: nothing to upload
    ├── DeviceError                 microphone / PortAudio problems (exit 69)
    │   └── WrongKeyError           the device key is missing, unreadable, or not the one a recording is sealed to
    ├── ArchiveError                the WAV archive cannot be written or repaired (exit 73)
    │   └── DamagedRecordingError   a sealed recording fails authentication (flipped, cut, reordered or torn)
    ├── ApiError                    MediSync / MediSearch HTTP API failures (exit 69)
    │   ├── AuthError               401, login refused or token expired
    │   ├── SubscriptionError       403, no active subscription
    │   ├── NotFoundError           404
    │   ├── RateLimitError          429, carries retry_after seconds
    │   ├── ServerError             5xx
    │   ├── EnvelopeError           {"success": false, "error": ...}
    │   ├── ResponseError           response not as documented (malformed JSON, wrong shape)
    │   ├── TransportError          connection refused, reset, timeout
    │   ├── UploadTooLargeError     file over the documented limit, refused before sending
    │   ├── AlreadyExistsError      one recording per appointment: the server holds one
    │   ├── RecordingMismatchError  the server holds a different recording for the appointment
    │   └── WrongAppointmentError   an upload answer names another appointment than the one uploaded
    ├── StreamError                 speech socket failures (exit 69)
    │   └── ProtocolError           the peer broke the speech protocol
    ├── ControlError                the daemon's control socket (exit 69)
    ├── ConsentRequiredError        visit.require_consent is on and no consent answer was given (exit 77)
    └── NotInstalledError           a command needs an optional extra this installation lacks (exit 69)
"""

from __future__ import annotations

EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_IOERR = 74
EX_NOPERM = 77
EX_CONFIG = 78


class AgentError(Exception):
    """Base of every error the agent reports to a person."""

    exit_code: int = 1


class ConfigError(AgentError):
    exit_code = EX_CONFIG


class WrongKeyError(ConfigError):
    """The device key is missing or unreadable, does not match the recipient recordings are sealed to, or a
    recording was sealed to another key. Exit 78: a key does not heal by retrying."""


class InputError(AgentError):
    exit_code = EX_DATAERR


class NoAudioError(InputError):
    """A visit captured no audio (stopped at once, empty source): nothing is queued, the appointment stays free."""


class DeviceError(AgentError):
    exit_code = EX_UNAVAILABLE


class ArchiveError(AgentError):
    exit_code = EX_CANTCREAT


class DamagedRecordingError(ArchiveError):
    """A sealed recording does not authenticate: the message names the file and the chunk. Never uploaded as a
    whole; ``medisync-agent repair`` keeps its intact part."""


class ApiError(AgentError):
    exit_code = EX_UNAVAILABLE

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthError(ApiError):
    pass


class SubscriptionError(ApiError):
    pass


class NotFoundError(ApiError):
    pass


class RateLimitError(ApiError):
    def __init__(self, message: str, *, status: int | None = 429, retry_after: float | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class ServerError(ApiError):
    pass


class EnvelopeError(ApiError):
    pass


class ResponseError(ApiError):
    pass


class TransportError(ApiError):
    pass


class UploadTooLargeError(ApiError):
    exit_code = EX_DATAERR


class AlreadyExistsError(ApiError):
    pass


class RecordingMismatchError(ApiError):
    pass


class WrongAppointmentError(ApiError):
    """MediSync accepted an upload but says it belongs to another appointment: not delivered where it should be."""


class StreamError(AgentError):
    exit_code = EX_UNAVAILABLE


class ProtocolError(StreamError):
    pass


class ControlError(AgentError):
    """The daemon's control socket: the daemon is not running, refused a request, or cannot create its socket."""

    exit_code = EX_UNAVAILABLE


class ConsentRequiredError(AgentError):
    """``visit.require_consent`` is on and the start gave no answer (``--consent given`` or ``declined``): nothing
    is recorded. Exit 77 (EX_NOPERM): recording is not permitted yet."""

    exit_code = EX_NOPERM


class NotInstalledError(AgentError):
    """A command needs packages of an optional extra (``[server]``) that this installation does not have."""

    exit_code = EX_UNAVAILABLE
