"""Secrets (password, token, API key) and where the agent reads them from.

A :class:`Secret` never shows its value in ``repr()``, ``str()`` or f-strings, so a secret that ends up in a log
line, a traceback's locals or an exception message shows ``***``. Code that really needs the value calls
:meth:`Secret.reveal` at the one place it goes on the wire.

Secret files must not be readable by group or others: a password in a world-readable file is refused with a
:class:`~agent.errors.ConfigError` instead of being used.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ConfigError
from agent.settings import ApiSettings

MASK = "***"

PASSWORD_ENV = "MEDISYNC_PASSWORD"
"""Environment variable with the password, used only when neither a password file nor a systemd credential exists."""
EMAIL_ENV = "MEDISYNC_EMAIL"
"""Environment variable with the login e-mail, used when the settings leave it empty."""
SYSTEMD_CREDENTIAL = "password"
"""Name of the systemd credential (``LoadCredential=password:...``) holding the password."""


class Secret:
    """A string that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself: call this only where the secret goes on the wire."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, format_spec: str) -> str:
        return MASK

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> str:
        # Pickling would write the value somewhere we do not control.
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True)
class Credentials:
    """Login of the clinic's MediSync account."""

    email: str
    password: Secret


def read_secret_file(path: str | os.PathLike[str], what: str) -> Secret:
    """Read a secret from ``path``; refuse a file that group or others may read.

    ``what`` names the secret in error messages ("password", "API key"); the value itself never appears there.
    """
    file = Path(path)
    try:
        mode = file.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{what} file {file} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {file}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{what} file {file} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {file}"
        )
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read {what} file {file}: {reason}") from None
    value = text.strip("\r\n")
    if not value:
        raise ConfigError(f"{what} file {file} is empty")
    return Secret(value)


def load_credentials(settings: ApiSettings, environ: Mapping[str, str] | None = None) -> Credentials:
    """Email and password for logging in.

    The password comes from, in order: ``settings.password_file``; the systemd credential ``password``
    (``$CREDENTIALS_DIRECTORY/password``); the environment variable ``MEDISYNC_PASSWORD``.
    """
    env = os.environ if environ is None else environ
    email = settings.email or env.get(EMAIL_ENV, "")
    if not email:
        raise ConfigError(f"no MediSync login e-mail configured (api.email or {EMAIL_ENV})")
    if settings.password_file:
        return Credentials(email, read_secret_file(settings.password_file, "password"))
    credentials_dir = env.get("CREDENTIALS_DIRECTORY", "")
    if credentials_dir:
        candidate = Path(credentials_dir) / SYSTEMD_CREDENTIAL
        if candidate.exists():
            return Credentials(email, read_secret_file(candidate, "password"))
    password = env.get(PASSWORD_ENV, "")
    if password:
        return Credentials(email, Secret(password))
    raise ConfigError(
        f"no MediSync password configured (api.password_file, systemd credential '{SYSTEMD_CREDENTIAL}' "
        f"or {PASSWORD_ENV})"
    )
