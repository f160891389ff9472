"""X25519 and ChaCha20-Poly1305 from the libcrypto the process already has (issue 11: the daemon's memory).

Python's ``ssl`` links OpenSSL's libcrypto, so it is in every agent process that talks HTTPS; sealing recordings
through it costs no memory of its own, where the ``cryptography`` package brought a second copy inside its Rust
module (about 9 MB resident). This is a thin, typed ctypes adapter over libcrypto's EVP API, nothing more:

* :func:`x25519_public`, :func:`x25519_shared`, :func:`x25519_private` (RFC 7748; a private key is 32 random bytes,
  the function clamps them);
* :func:`seal` / :func:`open_sealed`: the ChaCha20-Poly1305 AEAD of RFC 8439 (32-byte key, 12-byte nonce, 16-byte tag
  after the ciphertext); a tag that does not verify is :class:`AuthenticationFailed`.

The library is the one ``_ssl`` loaded (found by soname with ``RTLD_NOLOAD`` first), else the system's; OpenSSL 1.1.1
or later. A missing or older one is :class:`CryptoUnavailable`, one line, when :func:`check` runs at start (and at
the first call otherwise). Every return code is checked and every context freed; libcrypto's error queue is
cleared after a failure so that ``ssl`` never reports our errors as its own. Keys and nonces of the wrong length
raise ValueError before libcrypto sees them.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from agent.errors import NotInstalledError

KEY = 32
"""Bytes of an X25519 private or public key, of a shared secret, and of a ChaCha20-Poly1305 key."""
NONCE = 12
TAG = 16
MIN_VERSION = 0x10101000
"""OpenSSL 1.1.1: the first with raw X25519 keys (``EVP_PKEY_new_raw_private_key``)."""
SONAMES = ("libcrypto.so.3", "libcrypto.so.1.1")
_NID_X25519 = 1034
_CTRL_AEAD_GET_TAG = 0x10
_CTRL_AEAD_SET_TAG = 0x11
_MAX_INPUT = 1 << 30
"""Longest plaintext or associated data taken in one call (libcrypto counts in ``int``)."""

_P = ctypes.c_void_p
_SIZE_P = ctypes.POINTER(ctypes.c_size_t)
_INT_P = ctypes.POINTER(ctypes.c_int)
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "OpenSSL_version_num": (ctypes.c_ulong, []),
    "ERR_clear_error": (None, []),
    "EVP_PKEY_new_raw_private_key": (_P, [ctypes.c_int, _P, ctypes.c_char_p, ctypes.c_size_t]),
    "EVP_PKEY_new_raw_public_key": (_P, [ctypes.c_int, _P, ctypes.c_char_p, ctypes.c_size_t]),
    "EVP_PKEY_get_raw_public_key": (ctypes.c_int, [_P, ctypes.c_char_p, _SIZE_P]),
    "EVP_PKEY_free": (None, [_P]),
    "EVP_PKEY_CTX_new": (_P, [_P, _P]),
    "EVP_PKEY_CTX_free": (None, [_P]),
    "EVP_PKEY_derive_init": (ctypes.c_int, [_P]),
    "EVP_PKEY_derive_set_peer": (ctypes.c_int, [_P, _P]),
    "EVP_PKEY_derive": (ctypes.c_int, [_P, ctypes.c_char_p, _SIZE_P]),
    "EVP_chacha20_poly1305": (_P, []),
    "EVP_CIPHER_CTX_new": (_P, []),
    "EVP_CIPHER_CTX_free": (None, [_P]),
    "EVP_CIPHER_CTX_ctrl": (ctypes.c_int, [_P, ctypes.c_int, ctypes.c_int, _P]),
    "EVP_CipherInit_ex": (ctypes.c_int, [_P, _P, _P, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]),
    "EVP_CipherUpdate": (ctypes.c_int, [_P, ctypes.c_char_p, _INT_P, ctypes.c_char_p, ctypes.c_int]),
    "EVP_CipherFinal_ex": (ctypes.c_int, [_P, ctypes.c_char_p, _INT_P]),
}
"""(restype, argtypes) of every function used (``None``: returns ``void``)."""


class CryptoUnavailable(NotInstalledError):
    """No usable libcrypto (missing, or older than OpenSSL 1.1.1): recordings cannot be sealed or opened (exit 69)."""


class AuthenticationFailed(ValueError):
    """The ciphertext, its tag, the nonce, the key or the associated data is not what was sealed."""


class CryptoFailure(RuntimeError):
    """libcrypto refused a call that should not fail with valid input (named in the message)."""


@dataclass(frozen=True, slots=True)
class Libcrypto:
    """The loaded library with every function typed; ``path`` is the name it was loaded by."""

    lib: ctypes.CDLL
    path: str
    version: int


def load(names: Sequence[str]) -> Libcrypto:
    """The first of ``names`` already in the process, else the first that loads; CryptoUnavailable if none does or
    it lacks a function this module needs or is older than OpenSSL 1.1.1."""
    with contextlib.suppress(ImportError):  # a Python without ssl: the library is loaded by name below
        import _ssl  # noqa: F401  (loads Python's own libcrypto, so RTLD_NOLOAD finds exactly that one)
    tried: list[str] = []
    for mode in (os.RTLD_NOLOAD | ctypes.DEFAULT_MODE, ctypes.DEFAULT_MODE):
        for name in names:
            try:
                lib = ctypes.CDLL(name, mode=mode)
            except OSError as exc:
                tried.append(str(exc))
                continue
            return _typed(lib, name)
    reason = tried[-1] if tried else "no library name to try"
    raise CryptoUnavailable(f"sealing recordings needs OpenSSL's libcrypto (1.1.1 or later), not found ({reason}); "
                            "install the system's OpenSSL (Debian: libssl3)")  # fmt: skip


def _typed(lib: ctypes.CDLL, name: str) -> Libcrypto:
    for function, (restype, argtypes) in _SIGNATURES.items():
        try:
            entry = getattr(lib, function)
        except AttributeError:
            raise CryptoUnavailable(f"sealing recordings needs OpenSSL 1.1.1 or later; {name} lacks {function} "
                                    "(install the system's OpenSSL, Debian: libssl3)") from None  # fmt: skip
        entry.restype = restype
        entry.argtypes = argtypes
    version = int(lib.OpenSSL_version_num())
    if version < MIN_VERSION:
        raise CryptoUnavailable(f"sealing recordings needs OpenSSL 1.1.1 or later; {name} is version {version:#x} "
                                "(install the system's OpenSSL, Debian: libssl3)")  # fmt: skip
    if not lib.EVP_chacha20_poly1305():
        raise CryptoUnavailable(f"{name} has no ChaCha20-Poly1305 (OpenSSL built without it): recordings cannot "
                                "be sealed")  # fmt: skip
    return Libcrypto(lib, name, version)


@functools.cache
def libcrypto() -> Libcrypto:
    """The process's libcrypto, loaded once: by soname (the one ``_ssl`` linked is found first), else by the
    linker's search (``ctypes.util.find_library``, which runs ``ldconfig``: only when the sonames fail)."""
    try:
        return load(SONAMES)
    except CryptoUnavailable:
        import ctypes.util

        found = ctypes.util.find_library("crypto")
        if not found or found in SONAMES:
            raise
        return load([found])


def check() -> Libcrypto:
    """Load the library now (at a command's start): CryptoUnavailable, one line, if sealing could not work."""
    return libcrypto()


# --- X25519 ----------------------------------------------------------------------------------------------------


def x25519_private() -> bytes:
    """A new private key: 32 bytes from the system's random source (RFC 7748 section 6.1; X25519 clamps them)."""
    return secrets.token_bytes(KEY)


def x25519_public(private: bytes) -> bytes:
    """The public key of ``private``: X25519(private, 9)."""
    lib = libcrypto().lib
    with _pkey(lib.EVP_PKEY_new_raw_private_key, _sized(private, KEY, "X25519 private key")) as key:
        out = ctypes.create_string_buffer(KEY)
        size = ctypes.c_size_t(KEY)
        _ok(lib.EVP_PKEY_get_raw_public_key(key, out, ctypes.byref(size)), "EVP_PKEY_get_raw_public_key")
        if size.value != KEY:
            raise CryptoFailure(f"EVP_PKEY_get_raw_public_key gave {size.value} bytes")
        return out.raw


def x25519_shared(private: bytes, public: bytes) -> bytes:
    """X25519(private, public). ValueError when ``public`` is a low-order point (the shared secret would be all
    zeros, which libcrypto refuses), as RFC 7748 section 6.1 allows checking."""
    lib = libcrypto().lib
    mine = _sized(private, KEY, "X25519 private key")
    theirs = _sized(public, KEY, "X25519 public key")
    with _pkey(lib.EVP_PKEY_new_raw_private_key, mine) as key, _pkey(lib.EVP_PKEY_new_raw_public_key, theirs) as peer:
        ctx = lib.EVP_PKEY_CTX_new(key, None)
        if not ctx:
            _fail(lib, "EVP_PKEY_CTX_new")
        try:
            _ok(lib.EVP_PKEY_derive_init(ctx), "EVP_PKEY_derive_init")
            _ok(lib.EVP_PKEY_derive_set_peer(ctx, peer), "EVP_PKEY_derive_set_peer")
            out = ctypes.create_string_buffer(KEY)
            size = ctypes.c_size_t(KEY)
            if lib.EVP_PKEY_derive(ctx, out, ctypes.byref(size)) != 1 or size.value != KEY:
                lib.ERR_clear_error()
                raise ValueError("X25519 with a low-order public key (the shared secret would be all zeros)")
            return out.raw
        finally:
            lib.EVP_PKEY_CTX_free(ctx)


@contextlib.contextmanager
def _pkey(new: Callable[..., int | None], raw: bytes) -> Iterator[int]:
    key = new(_NID_X25519, None, raw, len(raw))
    if not key:
        _fail(libcrypto().lib, new.__name__)
    try:
        yield key
    finally:
        libcrypto().lib.EVP_PKEY_free(key)


# --- ChaCha20-Poly1305 -----------------------------------------------------------------------------------------


def seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """ChaCha20-Poly1305 of ``plaintext`` (may be empty): the ciphertext followed by the 16-byte tag."""
    lib = libcrypto().lib
    _check_input(plaintext, aad)
    out = bytearray(len(plaintext) + TAG)
    view = (ctypes.c_char * len(out)).from_buffer(out)
    with _cipher(lib, _sized(key, KEY, "ChaCha20-Poly1305 key"), _sized(nonce, NONCE, "nonce"), encrypt=True) as ctx:
        _absorb(lib, ctx, aad)
        _update(lib, ctx, plaintext, view)
        final = ctypes.c_int(0)
        _ok(lib.EVP_CipherFinal_ex(ctx, None, ctypes.byref(final)), "EVP_CipherFinal_ex")
        tag = ctypes.byref(view, len(plaintext))
        _ok(lib.EVP_CIPHER_CTX_ctrl(ctx, _CTRL_AEAD_GET_TAG, TAG, tag), "EVP_CTRL_AEAD_GET_TAG")
    del view  # releases the bytearray's buffer export
    return bytes(out)


def open_sealed(key: bytes, nonce: bytes, sealed: bytes, aad: bytes = b"") -> bytes:
    """The plaintext of ``sealed`` (ciphertext and tag); AuthenticationFailed unless the tag verifies (also when
    ``sealed`` is too short to hold one)."""
    lib = libcrypto().lib
    if len(sealed) < TAG:
        raise AuthenticationFailed("shorter than its tag")
    _check_input(sealed, aad)
    body, tag = sealed[:-TAG], sealed[-TAG:]
    with _cipher(lib, _sized(key, KEY, "ChaCha20-Poly1305 key"), _sized(nonce, NONCE, "nonce"), encrypt=False) as ctx:
        _ok(lib.EVP_CIPHER_CTX_ctrl(ctx, _CTRL_AEAD_SET_TAG, TAG, tag), "EVP_CTRL_AEAD_SET_TAG")
        _absorb(lib, ctx, aad)
        out = ctypes.create_string_buffer(len(body))
        _update(lib, ctx, body, out)
        final = ctypes.c_int(0)
        if lib.EVP_CipherFinal_ex(ctx, None, ctypes.byref(final)) != 1:
            lib.ERR_clear_error()
            ctypes.memset(out, 0, len(body))  # never leave unauthenticated plaintext behind
            raise AuthenticationFailed("the tag does not verify")
        return out.raw


@contextlib.contextmanager
def _cipher(lib: ctypes.CDLL, key: bytes, nonce: bytes, *, encrypt: bool) -> Iterator[int]:
    """An initialised ChaCha20-Poly1305 context, freed on the way out."""
    ctx = lib.EVP_CIPHER_CTX_new()
    if not ctx:
        _fail(lib, "EVP_CIPHER_CTX_new")
    try:
        # 12 bytes is the cipher's default nonce length (RFC 8439), so key and nonce go in with the cipher
        cipher = lib.EVP_chacha20_poly1305()
        _ok(lib.EVP_CipherInit_ex(ctx, cipher, None, key, nonce, int(encrypt)), "EVP_CipherInit_ex")
        yield ctx
    finally:
        lib.EVP_CIPHER_CTX_free(ctx)


def _absorb(lib: ctypes.CDLL, ctx: int, aad: bytes) -> None:
    if aad:
        written = ctypes.c_int(0)
        _ok(lib.EVP_CipherUpdate(ctx, None, ctypes.byref(written), aad, len(aad)), "EVP_CipherUpdate (aad)")


def _update(lib: ctypes.CDLL, ctx: int, data: bytes, out: ctypes.Array[ctypes.c_char]) -> None:
    """Run ``data`` through the cipher into the start of ``out``."""
    if not data:
        return
    written = ctypes.c_int(0)
    _ok(lib.EVP_CipherUpdate(ctx, out, ctypes.byref(written), data, len(data)), "EVP_CipherUpdate")
    if written.value != len(data):
        raise CryptoFailure(f"EVP_CipherUpdate wrote {written.value} of {len(data)} bytes")


# --- checks ----------------------------------------------------------------------------------------------------


def _sized(value: bytes, size: int, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"{what}: bytes expected, not {type(value).__name__}")
    if len(value) != size:
        raise ValueError(f"{what}: {size} bytes expected, not {len(value)}")
    return value


def _check_input(data: bytes, aad: bytes) -> None:
    for value, what in ((data, "data"), (aad, "associated data")):
        if not isinstance(value, bytes):
            raise TypeError(f"{what}: bytes expected, not {type(value).__name__}")
        if len(value) > _MAX_INPUT:
            raise ValueError(f"{what}: longer than {_MAX_INPUT} bytes")


def _ok(result: int, call: str) -> None:
    if result != 1:
        _fail(libcrypto().lib, call)


def _fail(lib: ctypes.CDLL, call: str) -> NoReturn:
    lib.ERR_clear_error()
    raise CryptoFailure(f"libcrypto: {call} failed")
