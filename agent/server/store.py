"""SQLite persistence of the local server: users, documents (patients, appointments, transcriptions, notes),
recordings, transcript segments and speech sessions. Files (recordings, speech logs) live next to the database.

The data folder holds the token signing secret, password hashes and patients' recordings: it is created 0700 and
a folder that already exists must be private to this user (:class:`~agent.errors.ConfigError` otherwise, before
anything is read), so no other local user can read the secret and forge a token. The database is created 0600
before SQLite opens it (its -wal and -shm files take the database's permissions).

One connection guarded by a lock, so the server loop and a test thread (inspection) may both use it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.archive.storage import create_private_file, ensure_private_dir, private_dir_problem
from agent.errors import ConfigError
from agent.server import tokens

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    uid TEXT PRIMARY KEY, email TEXT UNIQUE NOT NULL, salt BLOB NOT NULL, password_hash BLOB NOT NULL,
    title TEXT NOT NULL, first_name TEXT NOT NULL, last_name TEXT NOT NULL, subscription INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS docs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, uid TEXT NOT NULL, appointment_id TEXT, body TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS docs_kind_uid ON docs (kind, uid);
CREATE TABLE IF NOT EXISTS recordings (
    appointment_id TEXT PRIMARY KEY, id TEXT NOT NULL, uid TEXT NOT NULL, file_name TEXT NOT NULL,
    size INTEGER NOT NULL, sha256 TEXT NOT NULL, content_type TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS segments (
    appointment_id TEXT NOT NULL, source TEXT NOT NULL, speaker TEXT NOT NULL, start_s REAL NOT NULL,
    end_s REAL NOT NULL, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY, uid TEXT NOT NULL, appointment_id TEXT, log_name TEXT NOT NULL,
    closed_last_seq INTEGER, created REAL NOT NULL);
"""

PBKDF2_ROUNDS = 20_000


@dataclass(frozen=True)
class User:
    uid: str
    email: str
    title: str
    first_name: str
    last_name: str
    subscription: bool

    def __repr__(self) -> str:
        return f"User(uid={self.uid!r}, subscription={self.subscription})"


@dataclass(frozen=True)
class Recording:
    id: str
    appointment_id: str
    uid: str
    file_name: str
    size: int
    sha256: str
    content_type: str
    created: float


@dataclass(frozen=True)
class Segment:
    speaker: str
    start_s: float
    end_s: float
    text: str
    source: str
    """``live`` (speech socket), ``recording`` (uploaded file) or ``manual`` (POST transcriptions/add)."""


@dataclass(frozen=True)
class SpeechSession:
    session_id: str
    uid: str
    appointment_id: str | None
    log_name: str
    closed_last_seq: int | None


def new_object_id() -> str:
    """A 24-hex-digit id like MongoDB's ObjectId, which MediSync's ``_id`` fields look like."""
    return f"{int(time.time()):08x}{secrets.token_hex(8)}"


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def _hash_password(password: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, PBKDF2_ROUNDS)


def open_private_data_dir(data_dir: Path) -> None:
    """Create ``data_dir`` (0700) or check that the existing folder is private to this user; ConfigError if not."""
    try:
        if not (data_dir.exists() or data_dir.is_symlink()):
            ensure_private_dir(data_dir)
    except OSError as exc:
        raise ConfigError(f"cannot create the server's data folder {data_dir}: {exc.strerror or exc}") from None
    problem = private_dir_problem(data_dir)
    if problem is not None:
        raise ConfigError(f"refusing the server's data folder {data_dir}: it {problem} (it holds the token secret, "
                          "password hashes and recordings)")


class Store:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.recordings_dir = data_dir / "recordings"
        self.speech_dir = data_dir / "speech"
        open_private_data_dir(data_dir)
        for folder in (self.recordings_dir, self.speech_dir):
            ensure_private_dir(folder)
        database = data_dir / "medisync.sqlite3"
        try:
            create_private_file(database)
        except OSError as exc:
            raise ConfigError(f"cannot create the server's database {database}: {exc.strerror or exc}") from None
        self._lock = threading.RLock()
        self._db = sqlite3.connect(database, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # --- meta -------------------------------------------------------------------------------------------------
    def token_secret(self) -> bytes:
        """The HS256 signing key, created once and kept, so tokens survive a server restart."""
        with self._lock:
            rows = self._exec("SELECT value FROM meta WHERE key = 'token_secret'")
            if rows:
                return bytes(rows[0][0])
            secret = tokens.new_secret()
            self._exec("INSERT INTO meta (key, value) VALUES ('token_secret', ?)", (secret,))
            return secret

    def get_meta_float(self, key: str, default: float) -> float:
        rows = self._exec("SELECT value FROM meta WHERE key = ?", (key,))
        return float(rows[0][0]) if rows else default

    def set_meta_float(self, key: str, value: float) -> None:
        self._exec("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # --- users ------------------------------------------------------------------------------------------------
    def add_user(self, email: str, password: str, *, subscription: bool = True, title: str = "Dr.",
                 first_name: str = "Demo", last_name: str = "Doctor") -> User:
        """Create the user, or update password and subscription of an existing one with that e-mail."""
        salt = secrets.token_bytes(16)
        digest = _hash_password(password, salt)
        with self._lock:
            existing = self.user_by_email(email)
            uid = existing.uid if existing else f"user_{secrets.token_hex(6)}"
            self._exec(
                "INSERT OR REPLACE INTO users VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (uid, email, salt, digest, title, first_name, last_name, int(subscription)),
            )
        return User(uid, email, title, first_name, last_name, subscription)

    def _user(self, where: str, value: str) -> User | None:
        rows = self._exec(
            f"SELECT uid, email, title, first_name, last_name, subscription FROM users WHERE {where} = ?", (value,)
        )
        if not rows:
            return None
        uid, email, title, first, last, sub = rows[0]
        return User(uid, email, title, first, last, bool(sub))

    def user_by_email(self, email: str) -> User | None:
        return self._user("email", email)

    def user_by_uid(self, uid: str) -> User | None:
        return self._user("uid", uid)

    def check_password(self, email: str, password: str) -> User | None:
        rows = self._exec("SELECT salt, password_hash FROM users WHERE email = ?", (email,))
        if not rows:
            return None
        salt, digest = rows[0]
        if not secrets.compare_digest(_hash_password(password, bytes(salt)), bytes(digest)):
            return None
        return self.user_by_email(email)

    def set_subscription(self, uid: str, active: bool) -> None:
        self._exec("UPDATE users SET subscription = ? WHERE uid = ?", (int(active), uid))

    # --- documents --------------------------------------------------------------------------------------------
    def put_doc(self, kind: str, uid: str, body: dict[str, Any], appointment_id: str | None = None,
                doc_id: str | None = None) -> dict[str, Any]:
        """Insert (or replace, when ``doc_id`` exists) a document; returns it with ``_id`` and timestamps."""
        now = time.time()
        with self._lock:
            old = self._exec("SELECT created FROM docs WHERE id = ? AND uid = ?", (doc_id, uid)) if doc_id else []
            created = float(old[0][0]) if old else now
            doc_id = doc_id or new_object_id()
            clean = {k: v for k, v in body.items() if not k.startswith("_") and k not in ("createdAt", "updatedAt")}
            self._exec(
                "INSERT OR REPLACE INTO docs VALUES (?, ?, ?, ?, ?, ?, ?)",
                (doc_id, kind, uid, appointment_id, json.dumps(clean), created, now),
            )
            doc = self.get_doc(kind, uid, doc_id)
        assert doc is not None
        return doc

    def get_doc(self, kind: str, uid: str, doc_id: str | None) -> dict[str, Any] | None:
        """The document if it exists AND belongs to ``uid`` (isolation: another user's id looks unknown)."""
        rows = self._exec(
            "SELECT id, body, created, updated FROM docs WHERE kind = ? AND uid = ? AND id = ?", (kind, uid, doc_id)
        )
        return self._doc(rows[0]) if rows else None

    def list_docs(self, kind: str, uid: str, appointment_id: str | None = None) -> list[dict[str, Any]]:
        if appointment_id is None:
            rows = self._exec("SELECT id, body, created, updated FROM docs WHERE kind = ? AND uid = ? "
                              "ORDER BY created, rowid", (kind, uid))
        else:
            rows = self._exec("SELECT id, body, created, updated FROM docs WHERE kind = ? AND uid = ? "
                              "AND appointment_id = ? ORDER BY created, rowid", (kind, uid, appointment_id))
        return [self._doc(row) for row in rows]

    def doc_owner(self, doc_id: str) -> str | None:
        rows = self._exec("SELECT uid FROM docs WHERE id = ?", (doc_id,))
        return str(rows[0][0]) if rows else None

    @staticmethod
    def _doc(row: tuple[Any, ...]) -> dict[str, Any]:
        doc_id, body, created, updated = row
        doc: dict[str, Any] = {"_id": doc_id, **json.loads(body)}
        doc["createdAt"], doc["updatedAt"] = iso(created), iso(updated)
        return doc

    # --- recordings -------------------------------------------------------------------------------------------
    def add_recording(self, rec: Recording) -> bool:
        """Register a stored file; False if the appointment already has one (one recording per appointment)."""
        try:
            self._exec(
                "INSERT INTO recordings VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (rec.appointment_id, rec.id, rec.uid, rec.file_name, rec.size, rec.sha256, rec.content_type,
                 rec.created),
            )
        except sqlite3.IntegrityError:
            return False
        return True

    def recording(self, appointment_id: str) -> Recording | None:
        rows = self._exec("SELECT id, appointment_id, uid, file_name, size, sha256, content_type, created "
                          "FROM recordings WHERE appointment_id = ?", (appointment_id,))
        return Recording(*rows[0]) if rows else None

    def delete_recording(self, appointment_id: str) -> None:
        with self._lock:
            self._exec("DELETE FROM recordings WHERE appointment_id = ?", (appointment_id,))
            self._exec("DELETE FROM segments WHERE appointment_id = ? AND source = 'recording'", (appointment_id,))

    # --- transcript segments ----------------------------------------------------------------------------------
    def add_segments(self, appointment_id: str, segments: list[Segment]) -> None:
        with self._lock:
            for seg in segments:
                self._exec("INSERT INTO segments VALUES (?, ?, ?, ?, ?, ?)",
                           (appointment_id, seg.source, seg.speaker, seg.start_s, seg.end_s, seg.text))

    def segments(self, appointment_id: str) -> list[Segment]:
        rows = self._exec("SELECT speaker, start_s, end_s, text, source FROM segments WHERE appointment_id = ? "
                          "ORDER BY source, start_s, rowid", (appointment_id,))
        return [Segment(*row) for row in rows]

    # --- speech sessions --------------------------------------------------------------------------------------
    def speech_session(self, session_id: str) -> SpeechSession | None:
        rows = self._exec("SELECT session_id, uid, appointment_id, log_name, closed_last_seq FROM sessions "
                          "WHERE session_id = ?", (session_id,))
        return SpeechSession(*rows[0]) if rows else None

    def add_speech_session(self, session_id: str, uid: str, appointment_id: str | None) -> SpeechSession:
        log_name = hashlib.sha256(session_id.encode()).hexdigest()[:32] + ".log"
        with self._lock:
            existing = self.speech_session(session_id)
            if existing is not None:
                return existing
            self._exec("INSERT INTO sessions VALUES (?, ?, ?, ?, NULL, ?)",
                       (session_id, uid, appointment_id, log_name, time.time()))
        return SpeechSession(session_id, uid, appointment_id, log_name, None)

    def close_speech_session(self, session_id: str, last_seq: int) -> None:
        self._exec("UPDATE sessions SET closed_last_seq = ? WHERE session_id = ?", (last_seq, session_id))
