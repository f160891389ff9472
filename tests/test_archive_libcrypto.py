"""The archive's primitives from the libcrypto ``ssl`` loads (agent/archive/libcrypto.py) and the standard library
(age.py's HKDF and HMAC): known-answer vectors typed from the RFCs, random inputs against the ``cryptography``
package (an independent implementation, test extra only), tampering, wrong lengths, and a missing library.

Vectors: RFC 7748 section 6.1 (X25519 Diffie-Hellman), RFC 8439 section 2.8.2 (ChaCha20-Poly1305 AEAD), RFC 5869
appendix A.1 (HKDF-SHA-256, the first 32 bytes of its 42-byte output: age takes 32).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from agent.archive import age, libcrypto
from agent.archive.libcrypto import AuthenticationFailed, CryptoUnavailable
from tests.plugins.archive import REPO

# RFC 7748 section 6.1
ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

# RFC 8439 section 2.8.2
AEAD_PLAINTEXT = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
                  b"sunscreen would be it.")  # fmt: skip
AEAD_AAD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
AEAD_KEY = bytes(range(0x80, 0xA0))
AEAD_NONCE = bytes.fromhex("07000000") + bytes.fromhex("4041424344454647")  # constant || IV
AEAD_CIPHERTEXT = bytes.fromhex(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
    "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
    "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116"
)
AEAD_TAG = bytes.fromhex("1ae10b594f09e26a7e902ecbd0600691")


def test_x25519_matches_rfc_7748() -> None:
    assert libcrypto.x25519_public(ALICE_PRIVATE) == ALICE_PUBLIC
    assert libcrypto.x25519_public(BOB_PRIVATE) == BOB_PUBLIC
    assert libcrypto.x25519_shared(ALICE_PRIVATE, BOB_PUBLIC) == SHARED
    assert libcrypto.x25519_shared(BOB_PRIVATE, ALICE_PUBLIC) == SHARED


def test_chacha20_poly1305_matches_rfc_8439() -> None:
    sealed = libcrypto.seal(AEAD_KEY, AEAD_NONCE, AEAD_PLAINTEXT, AEAD_AAD)
    assert sealed == AEAD_CIPHERTEXT + AEAD_TAG
    assert libcrypto.open_sealed(AEAD_KEY, AEAD_NONCE, sealed, AEAD_AAD) == AEAD_PLAINTEXT


def test_hkdf_sha256_matches_rfc_5869() -> None:
    okm = age._hkdf(bytes([0x0B] * 22), bytes(range(0x0D)), bytes(range(0xF0, 0xFA)))
    assert okm == bytes.fromhex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf")


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@pytest.mark.parametrize(
    ("what", "nonce", "sealed", "aad"),
    [
        ("tag", AEAD_NONCE, AEAD_CIPHERTEXT + flip(AEAD_TAG, 15), AEAD_AAD),
        ("ciphertext", AEAD_NONCE, flip(AEAD_CIPHERTEXT, 0) + AEAD_TAG, AEAD_AAD),
        ("aad", AEAD_NONCE, AEAD_CIPHERTEXT + AEAD_TAG, flip(AEAD_AAD, 11)),
        ("no aad", AEAD_NONCE, AEAD_CIPHERTEXT + AEAD_TAG, b""),
        ("nonce", flip(AEAD_NONCE, 0), AEAD_CIPHERTEXT + AEAD_TAG, AEAD_AAD),
        ("cut", AEAD_NONCE, AEAD_CIPHERTEXT[:-1] + AEAD_TAG, AEAD_AAD),
        ("no tag", AEAD_NONCE, AEAD_CIPHERTEXT, AEAD_AAD),
        ("shorter than a tag", AEAD_NONCE, AEAD_TAG[:15], AEAD_AAD),
        ("empty", AEAD_NONCE, b"", AEAD_AAD),
    ],
)
def test_anything_tampered_does_not_open(what: str, nonce: bytes, sealed: bytes, aad: bytes) -> None:
    with pytest.raises(AuthenticationFailed):
        libcrypto.open_sealed(AEAD_KEY, nonce, sealed, aad)


def test_another_key_does_not_open() -> None:
    with pytest.raises(AuthenticationFailed):
        libcrypto.open_sealed(flip(AEAD_KEY, 31), AEAD_NONCE, AEAD_CIPHERTEXT + AEAD_TAG, AEAD_AAD)


def test_an_empty_plaintext_seals_to_its_tag_alone() -> None:
    """age's last chunk of an empty file: legitimate, so not refused."""
    sealed = libcrypto.seal(AEAD_KEY, AEAD_NONCE, b"")
    assert len(sealed) == libcrypto.TAG
    assert libcrypto.open_sealed(AEAD_KEY, AEAD_NONCE, sealed) == b""


@pytest.mark.parametrize("size", [0, 1, 31, 33])
def test_keys_of_the_wrong_length_are_refused(size: int) -> None:
    key = bytes(range(size))
    with pytest.raises(ValueError, match=f"32 bytes expected, not {size}"):
        libcrypto.x25519_public(key)
    with pytest.raises(ValueError, match=f"32 bytes expected, not {size}"):
        libcrypto.x25519_shared(key, BOB_PUBLIC)
    with pytest.raises(ValueError, match=f"32 bytes expected, not {size}"):
        libcrypto.x25519_shared(ALICE_PRIVATE, key)
    with pytest.raises(ValueError, match=f"32 bytes expected, not {size}"):
        libcrypto.seal(key, AEAD_NONCE, b"x")
    with pytest.raises(ValueError, match=f"32 bytes expected, not {size}"):
        libcrypto.open_sealed(key, AEAD_NONCE, AEAD_CIPHERTEXT + AEAD_TAG)


@pytest.mark.parametrize("size", [0, 8, 11, 13, 24])
def test_nonces_of_the_wrong_length_are_refused(size: int) -> None:
    with pytest.raises(ValueError, match=f"nonce: 12 bytes expected, not {size}"):
        libcrypto.seal(AEAD_KEY, bytes(size), b"x")
    with pytest.raises(ValueError, match=f"nonce: 12 bytes expected, not {size}"):
        libcrypto.open_sealed(AEAD_KEY, bytes(size), AEAD_CIPHERTEXT + AEAD_TAG)


def test_inputs_that_are_not_bytes_are_refused() -> None:
    with pytest.raises(TypeError):
        libcrypto.seal(AEAD_KEY, AEAD_NONCE, bytearray(b"x"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        libcrypto.x25519_public("a" * 32)  # type: ignore[arg-type]


@pytest.mark.parametrize("public", [bytes(32), (1).to_bytes(32, "little")], ids=["zero", "one"])
def test_a_low_order_public_key_is_refused(public: bytes) -> None:
    with pytest.raises(ValueError, match="low-order"):
        libcrypto.x25519_shared(ALICE_PRIVATE, public)


def test_a_degenerate_share_in_a_header_opens_nothing() -> None:
    identity = age.Identity(ALICE_PRIVATE)
    with pytest.raises(age.NoMatchingKey, match="degenerate"):
        identity.unwrap(bytes(32), bytes(32))


def test_a_generated_key_is_fresh_and_its_public_key_matches() -> None:
    first, second = libcrypto.x25519_private(), libcrypto.x25519_private()
    assert first != second and len(first) == len(second) == 32
    shared = libcrypto.x25519_shared(first, libcrypto.x25519_public(second))
    assert shared == libcrypto.x25519_shared(second, libcrypto.x25519_public(first))


# --- against the cryptography package (the test extra), random inputs -----------------------------------------


def test_x25519_agrees_with_cryptography_on_random_keys() -> None:
    x25519 = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.x25519")
    for _ in range(50):
        mine, theirs = os.urandom(32), os.urandom(32)
        reference = x25519.X25519PrivateKey.from_private_bytes(mine)
        assert libcrypto.x25519_public(mine) == reference.public_key().public_bytes_raw()
        peer = x25519.X25519PrivateKey.from_private_bytes(theirs).public_key()
        assert libcrypto.x25519_shared(mine, peer.public_bytes_raw()) == reference.exchange(peer)


def test_chacha20_poly1305_agrees_with_cryptography_on_random_inputs() -> None:
    aead = pytest.importorskip("cryptography.hazmat.primitives.ciphers.aead")
    rng = random.Random(11)
    sizes = [0, 1, 15, 16, 17, 63, 64, 65, 1000, age.CHUNK - 1, age.CHUNK, age.CHUNK + 1]
    for size in sizes + [rng.randrange(0, 3 * age.CHUNK) for _ in range(20)]:
        key, nonce, plaintext = os.urandom(32), os.urandom(12), os.urandom(size)
        aad = os.urandom(rng.choice([0, 1, 12, 100]))
        reference = aead.ChaCha20Poly1305(key)
        sealed = libcrypto.seal(key, nonce, plaintext, aad)
        assert sealed == reference.encrypt(nonce, plaintext, aad or None), size
        assert libcrypto.open_sealed(key, nonce, reference.encrypt(nonce, plaintext, aad or None), aad) == plaintext


def test_an_age_file_opens_with_the_same_key_through_cryptography() -> None:
    """The whole framing computed by an independent stack: the payload key, then every chunk."""
    aead = pytest.importorskip("cryptography.hazmat.primitives.ciphers.aead")
    hkdf = pytest.importorskip("cryptography.hazmat.primitives.kdf.hkdf")
    hashes = pytest.importorskip("cryptography.hazmat.primitives.hashes")
    file_key, nonce = os.urandom(age.FILE_KEY), os.urandom(age.PAYLOAD_NONCE)
    payload = age.Payload(file_key, nonce)
    key = hkdf.HKDF(algorithm=hashes.SHA256(), length=32, salt=nonce, info=b"payload").derive(file_key)
    plaintext = os.urandom(age.CHUNK + 100)
    sealed = [payload.seal(0, plaintext[: age.CHUNK], last=False), payload.seal(1, plaintext[age.CHUNK :], last=True)]
    reference = aead.ChaCha20Poly1305(key)
    assert reference.decrypt(bytes(11) + b"\x00", sealed[0], None) == plaintext[: age.CHUNK]
    assert reference.decrypt((1).to_bytes(11, "big") + b"\x01", sealed[1], None) == plaintext[age.CHUNK :]


# --- a missing or old library ----------------------------------------------------------------------------------


def test_a_missing_library_is_one_line() -> None:
    with pytest.raises(CryptoUnavailable) as raised:
        libcrypto.load(["libmedisync-none.so.9"])
    assert "\n" not in str(raised.value) and "libcrypto" in str(raised.value) and "libssl3" in str(raised.value)
    assert raised.value.exit_code == 69


def test_a_library_without_the_functions_is_refused_as_too_old() -> None:
    with pytest.raises(CryptoUnavailable, match=r"needs OpenSSL 1\.1\.1 or later; libz\.so\.1 lacks"):
        libcrypto.load(["libz.so.1"])  # a real shared library that is not libcrypto


WITHOUT_LIBCRYPTO = """
import ctypes.util, sys
import agent.archive.libcrypto as lc
lc.SONAMES = ("libmedisync-none.so.9",)
ctypes.util.find_library = lambda name: None
from agent.cli import main
sys.exit(main(sys.argv[1:]))
"""
"""A system without libcrypto: no soname loads and the linker's search finds none."""


def test_record_without_libcrypto_stops_at_start_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "r.wav"
    done = subprocess.run([sys.executable, "-c", WITHOUT_LIBCRYPTO, "record", "--source", "synth:16000x1:tone=440/1",
                           "--duration", "1", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 69, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("medisync-agent: error: sealing recordings needs OpenSSL's libcrypto"), line
    assert list(tmp_path.iterdir()) == []  # nothing recorded, sealed or not
