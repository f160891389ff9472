"""The test session's device key (made by Debian's ``age-keygen``, an independent implementation) and readers of
sealed files that use Debian's ``age -d``.

At import the key's files are put into the environment (``MEDISYNC_AGENT_ARCHIVE_KEY_FILE`` /
``..._RECIPIENT_FILE``), so every command a test starts seals its recordings to this key and can open them;
``tests.plugins.visit.AgentHome`` writes the same paths into its configuration.

    TEST_KEY / TEST_RECIPIENT_FILE        paths;  TEST_IDENTITY / TEST_RECIPIENT   parsed (agent.archive.age)
    plaintext(path) -> bytes              a file's content, decrypted with ``age -d -i TEST_KEY`` when sealed
    age_decrypt(path, key=TEST_KEY)       CompletedProcess of ``age -d`` (to look at its errors)
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from agent.archive.age import MAGIC, Identity, Recipient
from agent.archive.keys import ArchiveKeys

KEY_DIR = Path(tempfile.mkdtemp(prefix="medisync-test-key-"))
atexit.register(shutil.rmtree, KEY_DIR, True)
TEST_KEY = KEY_DIR / "archive.key"
TEST_RECIPIENT_FILE = KEY_DIR / "archive.recipient"
subprocess.run(["age-keygen", "-o", str(TEST_KEY)], check=True, capture_output=True, timeout=60)
os.chmod(TEST_KEY, 0o600)
TEST_RECIPIENT_FILE.write_text(
    subprocess.run(["age-keygen", "-y", str(TEST_KEY)], check=True, capture_output=True, text=True).stdout
)
TEST_IDENTITY = Identity.parse(TEST_KEY.read_text())
TEST_RECIPIENT = Recipient.parse(TEST_RECIPIENT_FILE.read_text())
TEST_KEYS = ArchiveKeys(TEST_RECIPIENT, TEST_IDENTITY)
KEY_ENV = {
    "MEDISYNC_AGENT_ARCHIVE_KEY_FILE": str(TEST_KEY),
    "MEDISYNC_AGENT_ARCHIVE_RECIPIENT_FILE": str(TEST_RECIPIENT_FILE),
}
os.environ.update(KEY_ENV)


def is_sealed_file(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def age_decrypt(path: Path, key: Path = TEST_KEY) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["age", "-d", "-i", str(key), str(path)], capture_output=True, timeout=120)


def plaintext(path: Path, key: Path = TEST_KEY) -> bytes:
    """The file's content; a sealed one decrypted by Debian's ``age`` (the WAV inside keeps its streaming header)."""
    if not is_sealed_file(path):
        return path.read_bytes()
    result = age_decrypt(path, key)
    assert result.returncode == 0, f"age -d {path.name}: {result.stderr.decode(errors='replace')}"
    return result.stdout


def uploaded_bytes(path: Path, key: Path = TEST_KEY) -> bytes:
    """What uploading ``path`` must send: its plaintext, a sealed visit archive's streaming WAV sizes (0xFFFFFFFF)
    replaced by the real ones (RIFF size at 4, data size at 40; computed here, not by the agent's code)."""
    data = plaintext(path, key)
    if data[:4] == b"RIFF" and data[4:8] == b"\xff\xff\xff\xff" and data[36:44] == b"data\xff\xff\xff\xff":
        data = data[:4] + (len(data) - 8).to_bytes(4, "little") + data[8:40] + (len(data) - 44).to_bytes(4, "little") \
            + data[44:]
    return data
