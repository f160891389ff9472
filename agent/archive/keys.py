"""The device key that seals visit recordings at rest, and where the agent finds it.

* The *identity* (private key, age's ``AGE-SECRET-KEY-1...`` line, so ``age -d -i FILE`` opens our files) is
  needed to upload, repair, export: from ``archive.key_file`` (readable by its owner only, like the password
  file), else the systemd credential ``archive-key`` (``LoadCredentialEncrypted=`` in the unit:
  ``$CREDENTIALS_DIRECTORY/archive-key``), else, for root on the device, ``archive.key_credential`` opened with
  ``systemd-creds decrypt`` (sealed to the TPM2 where there is one; the key is never written out).
* The *recipient* (public key, ``age1...``) is all recording needs: ``archive.recipient_file`` (the service user
  reads it; it is not secret). When the identity is loaded too they must match: a recipient of another key would
  seal recordings this device can never open.

Each recording has its own file key (age's), wrapped in the file's header: destroying the header destroys that
visit. A missing or wrong key is a :class:`~agent.errors.WrongKeyError` (one line, exit 78) at start, never a
silent fallback to plaintext; ``archive.encrypt = false`` turns sealing off, explicitly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.api.secret import read_secret_file
from agent.archive import libcrypto
from agent.archive.age import AgeError, Identity, Recipient
from agent.errors import ConfigError, WrongKeyError
from agent.settings import ArchiveSettings

CREDENTIAL = "archive-key"
"""Name of the systemd credential holding the identity (``LoadCredentialEncrypted=archive-key:...``)."""
INIT_HINT = "create one with 'medisync-agent keys init'"


@dataclass(frozen=True)
class ArchiveKeys:
    """What sealing (``recipient``) and opening (``identity``, when loaded) recordings need."""

    recipient: Recipient
    identity: Identity | None = None

    def opener(self, what: str) -> Identity:
        """The identity, or a one-line WrongKeyError saying that ``what`` needs it."""
        if self.identity is None:
            raise WrongKeyError(f"{what} needs the device key, which is not loaded here")
        return self.identity


def load_archive_keys(settings: ArchiveSettings, *, identity: bool,
                      environ: Mapping[str, str] | None = None) -> ArchiveKeys | None:  # fmt: skip
    """The keys a command needs (``identity``: it uploads, repairs or exports), or None when ``archive.encrypt``
    is off. WrongKeyError (exit 78) for a missing, unreadable or mismatched key; CryptoUnavailable (exit 69) when
    the system's libcrypto cannot seal (checked here, at start, rather than at a visit's first chunk)."""
    if not settings.encrypt:
        return None
    libcrypto.check()
    opened = load_identity(settings, environ) if identity else None
    recipient = load_recipient(settings, derived=opened.recipient if opened is not None else None)
    return ArchiveKeys(recipient, opened)


def load_recipient(settings: ArchiveSettings, *, derived: Recipient | None = None) -> Recipient:
    path = Path(settings.recipient_file)
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        if derived is not None:
            return derived
        raise WrongKeyError(f"no device key: recipient file {path} does not exist ({INIT_HINT})") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
        raise WrongKeyError(f"cannot read the device key's recipient file {path}: {reason}") from None
    try:
        recipient = Recipient.parse(_first_line(text))
    except AgeError as exc:
        raise WrongKeyError(f"recipient file {path}: {exc}") from None
    if derived is not None and derived != recipient:
        raise WrongKeyError(f"the device key does not match {path} (recordings would be sealed to a key this device "
                            "cannot open): run 'medisync-agent keys show' and fix one of them")  # fmt: skip
    return recipient


def load_identity(settings: ArchiveSettings, environ: Mapping[str, str] | None = None) -> Identity:
    env = os.environ if environ is None else environ
    if settings.key_file:
        return _parse_identity(_read_key_file(settings.key_file), settings.key_file)
    credentials = env.get("CREDENTIALS_DIRECTORY", "")
    if credentials and (Path(credentials) / CREDENTIAL).exists():
        where = str(Path(credentials) / CREDENTIAL)
        return _parse_identity(_read_key_file(where), where)
    sealed = Path(settings.key_credential)
    if settings.key_credential and sealed.exists() and os.geteuid() == 0:
        return _parse_identity(decrypt_credential(sealed), str(sealed))
    raise WrongKeyError(
        f"no device key to open recordings (archive.key_file, systemd credential '{CREDENTIAL}', or "
        f"{settings.key_credential or 'archive.key_credential'} as root): {INIT_HINT}"
    )


def _read_key_file(path: str) -> str:
    """The key file's text; refused when group or others may read it (like the password file)."""
    try:
        return read_secret_file(path, "device key").reveal()
    except WrongKeyError:
        raise
    except ConfigError as exc:
        raise WrongKeyError(str(exc)) from None


def decrypt_credential(path: Path) -> str:
    """The identity inside an encrypted systemd credential (``systemd-creds decrypt``, as root)."""
    tool = shutil.which("systemd-creds")
    if tool is None:
        raise WrongKeyError(f"{path} is an encrypted credential and systemd-creds is not installed")
    result = subprocess.run([tool, f"--name={CREDENTIAL}", "decrypt", str(path), "-"], capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    if result.returncode != 0:
        reason = " ".join(result.stderr.split())[:160] or f"exit {result.returncode}"
        raise WrongKeyError(f"cannot decrypt the device key credential {path}: {reason}")
    return result.stdout


def _parse_identity(text: str, where: str) -> Identity:
    try:
        return Identity.parse(text)
    except AgeError as exc:
        raise WrongKeyError(f"device key {where}: {exc}") from None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not lines:
        raise WrongKeyError("the recipient file is empty")
    return lines[0]


def describe(settings: ArchiveSettings) -> str:
    """One line for ``config show`` / ``check``: whether recordings are sealed, and to what."""
    if not settings.encrypt:
        return "off (archive.encrypt = false): recordings are plaintext WAV on disk"
    try:
        recipient = load_recipient(settings)
    except ConfigError as exc:
        return f"on, but {exc}"
    return f"on (age, sealed to {recipient})"


def init_keys(settings: ArchiveSettings, *, force: bool = False) -> tuple[ArchiveKeys, str]:
    """Create the device key: the identity in ``archive.key_file`` (0600) or, without one, sealed as the systemd
    credential ``archive.key_credential`` (root, ``systemd-creds``); the recipient in ``archive.recipient_file``.
    Returns the keys and where the identity went. Refuses to replace an existing key unless ``force`` (every
    recording sealed to the old key would become unreadable)."""
    identity = Identity.generate()
    recipient_path = Path(settings.recipient_file)
    target = Path(settings.key_file or settings.key_credential)
    for existing in (target, recipient_path):
        if existing.exists() and not force:
            raise ConfigError(f"{existing} exists: a new device key would make every recording sealed to the old "
                              "one unreadable (use --force only if you mean that)")  # fmt: skip
    text = f"# public key: {identity.recipient}\n{identity.secret_text()}\n"
    if settings.key_file:
        _write_private(target, text.encode("ascii"))
    else:
        _seal_credential(target, text)
    _write_private(recipient_path, f"{identity.recipient}\n".encode("ascii"))
    return ArchiveKeys(identity.recipient, identity), str(target)


def _write_private(path: Path, data: bytes) -> None:
    from agent.archive.storage import ensure_private_dir, write_atomic  # storage imports the archive writer

    try:
        if not path.parent.exists():
            ensure_private_dir(path.parent)
        write_atomic(path, data)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None


def _seal_credential(path: Path, text: str) -> None:
    """``systemd-creds encrypt`` the identity (on stdin: it never touches the disk) into ``path``, TPM2-sealed where
    the machine has one (``--with-key=auto``)."""
    tool = shutil.which("systemd-creds")
    if tool is None or os.geteuid() != 0:
        raise ConfigError("set archive.key_file (or --key-file): sealing the key as a systemd credential needs root "
                          "and systemd-creds")  # fmt: skip
    result = subprocess.run([tool, f"--name={CREDENTIAL}", "--with-key=auto", "encrypt", "-", str(path)],
                            input=text, capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    if result.returncode != 0:
        reason = " ".join(result.stderr.split())[:160] or f"exit {result.returncode}"
        raise ConfigError(f"systemd-creds could not seal the device key into {path}: {reason}")
    os.chmod(path, 0o600)
