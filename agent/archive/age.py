"""The age v1 file format (https://age-encryption.org/v1), the framing only: header, X25519 stanza, STREAM chunks.

Why age: a documented, standard format that Debian's ``age`` tool opens (``age -d -i KEYFILE``), so IT can recover
a recording by hand; X25519 recipients, so recording needs only the public key; 64 KiB chunks each sealed with
ChaCha20-Poly1305 and numbered, so a crash loses at most the unsealed tail and a flipped, cut or reordered chunk
fails to authenticate on its own.

Only the framing is written here (header lines, stanza, header MAC input, chunk nonces, Bech32 key text). The
primitives: HMAC-SHA-256 and HKDF-SHA-256 (RFC 5869) from the standard library, X25519 and ChaCha20-Poly1305 from the
libcrypto Python's ``ssl`` already loaded (:mod:`agent.archive.libcrypto`; no package of its own on the device).

Nonce rule (never broken): a (payload key, chunk counter, last flag) triple seals exactly one plaintext. Sealing the
same plaintext again under the same triple gives the same bytes (a retry after a failed write); sealing the same
plaintext under the other flag is a different nonce (making the last chunk final). Nothing else is ever re-sealed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from agent.archive import libcrypto
from agent.archive.libcrypto import AuthenticationFailed

MAGIC = b"age-encryption.org/v1\n"
CHUNK = 64 * 1024
"""Plaintext bytes per payload chunk (the last one may be shorter)."""
TAG = 16
SEALED_CHUNK = CHUNK + TAG
PAYLOAD_NONCE = 16
FILE_KEY = 16
MAX_HEADER = 16 * 1024
"""Longest header accepted when reading (ours is about 200 bytes)."""
_X25519_INFO = b"age-encryption.org/v1/X25519"
_ZERO_NONCE = bytes(12)


class AgeError(ValueError):
    """The bytes are not a usable age file; ``str()`` is one line without a path (callers add it)."""


class NotAge(AgeError):
    """The file does not start with the age v1 version line."""


class HeaderError(AgeError):
    """The header is torn, malformed, or its MAC does not verify (the file key cannot be trusted)."""


class NoMatchingKey(AgeError):
    """No stanza of the header opens with the given identity (sealed to another key, or the stanza is damaged)."""


class ChunkError(AgeError):
    """Payload chunk ``index`` does not authenticate (flipped, cut, reordered, or missing its final mark)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index


# --- keys (Bech32 text as age writes it) ----------------------------------------------------------------------

_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: list[int]) -> int:
    check = 1
    for value in values:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ value
        for i, generator in enumerate(_GENERATOR):
            if (top >> i) & 1:
                check ^= generator
    return check


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _regroup(data: bytes | list[int], source: int, target: int, *, pad: bool) -> list[int]:
    acc = bits = 0
    out: list[int] = []
    for value in data:
        acc = (acc << source) | value
        bits += source
        while bits >= target:
            bits -= target
            out.append((acc >> bits) & ((1 << target) - 1))
    if pad and bits:
        out.append((acc << (target - bits)) & ((1 << target) - 1))
    elif not pad and (bits >= source or (acc << (target - bits)) & ((1 << target) - 1)):
        raise ValueError("bad padding")
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    """BIP173 Bech32 of ``data`` with human-readable part ``hrp`` (lowercase; no length limit, as age uses it)."""
    words = _regroup(data, 8, 5, pad=True)
    polymod = _polymod([*_hrp_expand(hrp), *words, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_BECH32[w] for w in [*words, *checksum])


def bech32_decode(text: str) -> tuple[str, bytes]:
    """(hrp, data) of a Bech32 string; ValueError if it is not one (mixed case, bad character or checksum)."""
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixed case")
    text = text.lower()
    hrp, sep, rest = text.rpartition("1")
    if not sep or not hrp or len(rest) < 6 or any(c not in _BECH32 for c in rest):
        raise ValueError("not Bech32")
    words = [_BECH32.index(c) for c in rest]
    if _polymod([*_hrp_expand(hrp), *words]) != 1:
        raise ValueError("bad checksum")
    return hrp, bytes(_regroup(words[:-6], 5, 8, pad=False))


@dataclass(frozen=True, slots=True)
class Recipient:
    """A device's public key: enough to seal a recording, not to open one."""

    public: bytes
    """32 bytes (X25519)."""

    @classmethod
    def parse(cls, text: str) -> Recipient:
        try:
            hrp, data = bech32_decode(text.strip())
        except ValueError:
            raise AgeError("not an age recipient (age1...)") from None
        if hrp != "age" or len(data) != 32:
            raise AgeError("not an X25519 age recipient (age1...)")
        return cls(data)

    def __str__(self) -> str:
        return bech32_encode("age", self.public)


class Identity:
    """A device's private key (an age X25519 identity). Never printed: ``str()`` shows its recipient only."""

    __slots__ = ("_key", "recipient")

    def __init__(self, private: bytes) -> None:
        """``private``: the 32 bytes of the X25519 private key."""
        self._key = private
        self.recipient = Recipient(libcrypto.x25519_public(private))

    @classmethod
    def generate(cls) -> Identity:
        return cls(libcrypto.x25519_private())

    @classmethod
    def parse(cls, text: str) -> Identity:
        """The first ``AGE-SECRET-KEY-1...`` line of an age identity file (comments and blank lines skipped)."""
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        if not lines:
            raise AgeError("no AGE-SECRET-KEY-1... line")
        try:
            hrp, data = bech32_decode(lines[0])
        except ValueError:
            raise AgeError("not an age identity (AGE-SECRET-KEY-1...)") from None
        if hrp != "age-secret-key-" or len(data) != 32:
            raise AgeError("not an X25519 age identity (AGE-SECRET-KEY-1...)")
        return cls(data)

    def secret_text(self) -> str:
        """The ``AGE-SECRET-KEY-1...`` line: only for writing the key file."""
        return bech32_encode("age-secret-key-", self._key).upper()

    def unwrap(self, share: bytes, body: bytes) -> bytes | None:
        """The file key from an X25519 stanza addressed to this identity, or None if it is not."""
        try:
            shared = libcrypto.x25519_shared(self._key, share)
        except ValueError:
            raise NoMatchingKey("the header holds a degenerate X25519 share") from None
        key = _hkdf(shared, share + self.recipient.public, _X25519_INFO)
        try:
            return libcrypto.open_sealed(key, _ZERO_NONCE, body)
        except AuthenticationFailed:
            return None

    def __repr__(self) -> str:
        return f"Identity(recipient={self.recipient})"


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA-256 (RFC 5869), 32 bytes of output: one block of the expand step. An empty salt is HMAC's all-zero
    key, as the RFC says."""
    prk = hmac.digest(salt, ikm, hashlib.sha256)
    return hmac.digest(prk, info + b"\x01", hashlib.sha256)


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def _unb64(text: bytes) -> bytes:
    """Canonical unpadded base64 only (the spec requires rejecting anything else)."""
    if text.endswith(b"="):
        raise HeaderError("padded base64 in the header")
    try:
        data = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise HeaderError("invalid base64 in the header") from None
    if _b64(data) != text:
        raise HeaderError("non-canonical base64 in the header")
    return data


# --- header ---------------------------------------------------------------------------------------------------


def _header_mac(file_key: bytes, covered: bytes) -> bytes:
    return hmac.digest(_hkdf(file_key, b"", b"header"), covered, hashlib.sha256)


def seal_header(file_key: bytes, recipient: Recipient) -> bytes:
    """The header wrapping ``file_key`` for ``recipient`` in one X25519 stanza, with its MAC line."""
    ephemeral = libcrypto.x25519_private()
    share = libcrypto.x25519_public(ephemeral)
    shared = libcrypto.x25519_shared(ephemeral, recipient.public)
    wrap_key = _hkdf(shared, share + recipient.public, _X25519_INFO)
    body = libcrypto.seal(wrap_key, _ZERO_NONCE, file_key)
    lines = [_b64(body)[i : i + 64] for i in range(0, len(_b64(body)), 64)]
    if not lines or len(lines[-1]) == 64:
        lines.append(b"")  # the body must end with a line shorter than 64 columns
    covered = MAGIC + b"-> X25519 " + _b64(share) + b"\n" + b"".join(line + b"\n" for line in lines) + b"---"
    return covered + b" " + _b64(_header_mac(file_key, covered)) + b"\n"


@dataclass(frozen=True, slots=True)
class Stanza:
    args: tuple[bytes, ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class Header:
    stanzas: tuple[Stanza, ...]
    covered: bytes
    """The bytes the MAC covers (through ``---``)."""
    mac: bytes
    length: int
    """Bytes of the header in the file; the payload nonce follows."""


def parse_header(data: bytes) -> Header:
    """Parse the header at the start of ``data`` (at least the whole header, at most MAX_HEADER bytes needed)."""
    if not data.startswith(MAGIC):
        if data.startswith(b"age-encryption.org/"):
            raise HeaderError("an age file of a version other than v1")
        raise NotAge("not an age file")
    pos = len(MAGIC)
    stanzas: list[Stanza] = []
    while True:
        line, pos = _line(data, pos)
        if line.startswith(b"---"):
            if not stanzas or not line.startswith(b"--- ") or len(line) != 47:
                raise HeaderError("malformed header MAC line")
            mac = _unb64(line[4:])
            covered = data[: pos - len(line) - 1 + 3]
            return Header(tuple(stanzas), covered, mac, pos)
        if not line.startswith(b"-> "):
            raise HeaderError("malformed header line")
        args = tuple(line[3:].split(b" "))
        if not all(args) or any(b < 33 or b > 126 for a in args for b in a):
            raise HeaderError("malformed stanza arguments")
        body = b""
        while True:
            text, pos = _line(data, pos)
            body += text
            if len(text) > 64:
                raise HeaderError("a stanza line longer than 64 columns")
            if len(text) < 64:
                break
        stanzas.append(Stanza(args, _unb64(body)))


def _line(data: bytes, pos: int) -> tuple[bytes, int]:
    end = data.find(b"\n", pos)
    if end < 0:
        raise HeaderError("the header is cut off (no MAC line)")
    return data[pos:end], end + 1


def open_header(header: Header, identity: Identity) -> bytes:
    """The file key, once a stanza for ``identity`` opens and the header MAC verifies."""
    for stanza in header.stanzas:
        if stanza.args[0] != b"X25519":
            continue  # other recipient types are not ours (the spec: ignore them)
        if len(stanza.args) != 2 or len(stanza.body) != 32:
            raise HeaderError("malformed X25519 stanza")
        share = _unb64(stanza.args[1])
        if len(share) != 32:
            raise HeaderError("malformed X25519 stanza")
        file_key = identity.unwrap(share, stanza.body)
        if file_key is not None:
            if not secrets.compare_digest(_header_mac(file_key, header.covered), header.mac):
                raise HeaderError("the header MAC does not verify (the header was altered)")
            return file_key
    raise NoMatchingKey("sealed to another key than this device's (or its key stanza is damaged)")


# --- payload ----------------------------------------------------------------------------------------------------


class Payload:
    """STREAM over ChaCha20-Poly1305 with the payload key of one file: chunk ``i`` sealed under nonce
    ``i (11 bytes, big endian) || last flag``."""

    __slots__ = ("_key",)

    def __init__(self, file_key: bytes, nonce: bytes) -> None:
        self._key = _hkdf(file_key, nonce, b"payload")

    def seal(self, index: int, plaintext: bytes | bytearray | memoryview, *, last: bool) -> bytes:
        return libcrypto.seal(self._key, _chunk_nonce(index, last), bytes(plaintext))

    def open(self, index: int, sealed: bytes, *, last: bool) -> bytes:
        """The chunk's plaintext; ChunkError if it does not authenticate at ``index`` with this flag."""
        try:
            return libcrypto.open_sealed(self._key, _chunk_nonce(index, last), sealed)
        except AuthenticationFailed:
            raise ChunkError(index, "does not authenticate") from None


def _chunk_nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def new_file(recipient: Recipient, random: Callable[[int], bytes] = os.urandom) -> tuple[bytes, Payload]:
    """A fresh file key sealed to ``recipient``: (header and payload nonce, the bytes a file starts with; the
    payload sealer). Every call makes a new file key: one per visit, so destroying a header destroys one visit."""
    file_key = random(FILE_KEY)
    nonce = random(PAYLOAD_NONCE)
    return seal_header(file_key, recipient) + nonce, Payload(file_key, nonce)


def chunk_layout(payload_bytes: int) -> tuple[int, int]:
    """(chunks, plaintext bytes) of a complete payload of ``payload_bytes`` (after the nonce); AgeError if no
    complete payload can be that long (the last chunk would be too short to hold its tag)."""
    if payload_bytes < TAG:
        raise AgeError("the payload is cut off")
    chunks = -(-payload_bytes // SEALED_CHUNK)
    last = payload_bytes - (chunks - 1) * SEALED_CHUNK
    if last <= TAG and chunks > 1:
        raise AgeError("the payload is cut off inside a chunk")
    return chunks, payload_bytes - chunks * TAG


def sealed_bytes(plain_bytes: int) -> int:
    """Payload bytes that ``plain_bytes`` of plaintext seal into (without header and nonce)."""
    chunks = max(1, -(-plain_bytes // CHUNK))
    return plain_bytes + chunks * TAG
