"""Frozen settings, one struct per area. Every field's docstring states its unit.

These are the values the code runs with; ``agent.config`` fills them from TOML, environment and CLI flags and
validates them. Defaults are what a device in a clinic should use unless IT has a reason to change them.
"""

from __future__ import annotations

from typing import Literal

import msgspec


class AudioSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    source: str = "mic"
    """Source spec: ``mic``, ``mic:<device name substring>``, ``file:<path.wav>`` or ``synth:<recipe>``."""
    pace: Literal["realtime", "fast"] = "realtime"
    """File and synthetic sources only: deliver audio in real time or as fast as possible."""
    frame_ms: Literal[10, 20, 30] = 20
    """Length of one timeline frame in milliseconds (also the VAD frame). A length that does not divide
    ``capture_block_ms`` (30 with 20, 100 or 120 ms blocks) holds the tail of each block until the next one."""
    handoff_seconds: float = 5.0
    """Capacity of the hand-off buffer between the capture callback and the DSP thread, in seconds of audio."""
    capture_block_ms: int = 120
    """Microphone callback block length in milliseconds (PortAudio ``blocksize``). Leaving it to PortAudio made
    the ALSA/PulseAudio path wake ~90 times a second at ~850 CPU-s per audio-hour for the capture alone; 20 ms
    costs ~40, 100 ms ~10. Larger blocks: fewer wake-ups, more latency. 120 (with ``stream.message_ms`` 120) is the
    efficient profile: the daemon ~1.2-1.4x ffmpeg's CPU beside it (100 ms blocks: ~1.8x, the event loop woken ~21
    instead of ~16 times a second), p95 capture-to-wire ~120 ms against its 150 ms target (``python -m benchmarks
    --only daemon``); 40 is the low-latency profile: the daemon ~70-120 CPU-s per audio-hour, p95 capture-to-wire
    ~42 ms against its 60 ms target (FIR resampler; ``python -m benchmarks.latency_stages``, ``python -m
    benchmarks.daemon_ab``); 20 halves the latency (p95 ~23 ms) at ~150-200 CPU-s. Keep it a multiple of
    ``frame_ms``. The daemon reads blocks of 40 ms and more from one blocking stream, once a second between visits
    and block by block during one (``agent/audio/mic_paced.py``: idle ~10 instead of ~15-17 CPU-s per audio-hour
    at 100 ms blocks, ~11 instead of ~25-27 at 40 ms); shorter blocks keep PortAudio's callback."""
    resampler: Literal["fir", "soxr"] = "fir"
    """How a source above 16 kHz (22.05, 32, 44.1, 48 kHz ...) is brought to 16 kHz: ``fir`` (the default), a
    fixed-delay polyphase FIR whose output leaves with each capture block (about 1.6 ms delay;
    :mod:`agent.audio.decimate`), or ``soxr`` (HQ), which keeps 20-40 ms of every block until the next one (at
    44.1 kHz, the PulseAudio microphone's rate with ``server_mic_16k`` off, that put 40 ms into the low-latency
    profile's median capture-to-wire latency: ``python -m benchmarks.latency_stages``). Rates the FIR does not
    handle (24 kHz, below 16 kHz) always use soxr; 16 kHz passes unchanged."""
    server_mic_16k: bool = True
    """Open a sound server's microphone (PortAudio's ALSA ``pulse`` or ``pipewire`` device, or ``default`` when
    alsa-lib routes it to one of them) at 16 kHz mono when the source spec gives no rate/channels: the server
    (48 kHz) resamples and downmixes once, as ``ffmpeg -f pulse -ar 16000 -ac 1`` asks, and the DSP passes the
    samples through. False: PortAudio's default rate (44.1 kHz for ``pulse``) and the device's channels (at most
    2), resampled twice (the server, then ``resampler``). Hardware devices (``hw:``, ``plughw:``, USB microphones
    through plain ALSA) always open at their native rate and channels (``agent/audio/mic_format.py``)."""


class VadSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    aggressiveness: Literal[0, 1, 2, 3] = 2
    """webrtcvad aggressiveness, 0 (keeps most) to 3 (gates most)."""
    onset_ms: int = 100
    """Speech must be detected for this many milliseconds (within the onset window) before a segment opens.
    100 rather than 60: on the bundled dialogue with background noise, 60 let noise open segments at 10 ms
    frames; 100 removed them and covered every utterance (``python -m agent.audio.vad_eval``)."""
    preroll_ms: int = 300
    """Milliseconds of audio before the confirmed onset that are passed with the segment (keeps the first word)."""
    hangover_ms: int = 600
    """Milliseconds of non-speech after which an open segment closes (bridges short pauses between words)."""


class ArchiveSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    directory: str = "/var/lib/medisync-agent/recordings"
    """Folder for visit WAV files (``.partial`` while recording)."""
    header_interval_s: float = 1.0
    """Seconds of audio between rewrites of the WAV header while recording."""
    fsync_interval_s: float = 1.0
    """Seconds of audio between fsync() calls: the most a power loss can cost (plus, for sealed archives, the
    unsealed tail: under 64 KiB, 2.048 s)."""
    encrypt: bool = True
    """Seal every recording at rest (age format: X25519 recipient, ChaCha20-Poly1305 in 64 KiB chunks). Turning it
    off writes plaintext WAV files; only for benchmarks and tests that compare both."""
    recipient_file: str = "/etc/medisync-agent/archive.recipient"
    """File with the device key's public recipient (``age1...``): all that recording needs. Written by
    ``medisync-agent keys init``; not secret."""
    key_file: str = ""
    """File with the device key (``AGE-SECRET-KEY-1...``, owner-only 0600), needed to upload, repair and export.
    Empty: the systemd credential ``archive-key``, else ``key_credential`` (root only)."""
    key_credential: str = "/etc/medisync-agent/archive-key.cred"
    """The device key as an encrypted systemd credential (``systemd-creds encrypt``, TPM2-sealed where the device
    has one); the unit loads it with ``LoadCredentialEncrypted=``, root's commands with ``systemd-creds decrypt``."""


class ApiSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    api_url: str = "https://app.medisync.me/api"
    """Base URL of MediSync's REST API (ends in ``/api``)."""
    speech_url: str = "wss://speech.medisync.me"
    """Base URL of the speech socket; ``/ws/transcribe`` is appended."""
    email: str = ""
    """Login e-mail of the clinic's MediSync account."""
    password_file: str = ""
    """File holding the password (must not be readable by group or others); empty: systemd credential ``password``."""
    timeout_s: float = 30.0
    """Seconds before an HTTP request without progress is abandoned."""
    confirm_timeout_s: float = 5.0
    """Seconds the checks before a visit (login, subscription, appointment) may take together. A slower MediSync
    does not hold the recording back: after this the visit records anyway, and the stream and upload catch up."""


class StreamSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    """Stream the visit for a live transcript. The archive and upload happen either way."""
    ring_seconds: float = 600.0
    """Send ring capacity in seconds of gated audio; older unacknowledged audio is dropped (and announced as gap)."""
    ring_bytes: int = 32 * 1024 * 1024
    """Send ring capacity in bytes of PCM; whichever limit is reached first applies."""
    message_ms: int = 120
    """Live wire message length in milliseconds (resume mode): smaller is lower latency, larger is cheaper. An upper
    bound: the sender sends what is waiting when a capture block was processed. 40 in the low-latency
    profile, 120 in the efficient one (with ``audio.capture_block_ms`` of the same length)."""
    replay_message_ms: int = 1000
    """Wire message length in milliseconds while replaying a backlog (resume mode), at most 1000."""
    replay_speed: float = 4.0
    """Backlog replay pace as a multiple of real time."""
    basic_max_chunk_s: float = 15.0
    """Basic mode: longest chunk in seconds; longer speech is split."""
    basic_chunk_timeout_s: float = 30.0
    """Basic mode: seconds a chunk may stay without transcription on a healthy connection before it counts as done."""
    basic_format: Literal["wav", "pcm"] = "wav"
    """Basic mode chunk encoding: a complete WAV file (MediSync's recommendation) or raw PCM."""
    ack_timeout_s: float = 10.0
    """Resume mode: seconds without ack progress while frames are outstanding before the connection is replaced."""
    ping_interval_s: float = 10.0
    """Seconds between WebSocket pings."""
    ping_timeout_s: float = 10.0
    """Seconds to wait for a pong before the connection is considered dead."""
    session_init_timeout_s: float = 5.0
    """Seconds to wait for ``session_init`` after connecting before proceeding without it."""
    end_timeout_s: float = 15.0
    """Seconds a stopped visit's stream is given on top of what its unconfirmed backlog needs (backlog /
    ``replay_speed`` + the pending reconnect delay): time to connect, send ``end`` and get ``closed``. Every
    confirmation from the server restarts that allowance; ``drain_max_s`` bounds the whole wait."""
    drain_max_s: float = 300.0
    """Longest wait in seconds, after a visit stops, for the server to confirm the rest of its live stream (a
    backlog left by an outage is replayed at ``replay_speed``; 300 s covers a full 600 s ring at 4x with
    reconnects). ``run`` shows the seconds still to confirm meanwhile; the daemon waits in the background and
    starts the next visit at once. Audio never confirmed is still in the uploaded recording."""
    backoff_first_s: float = 0.25
    """Upper bound in seconds of the first reconnect delay (full jitter)."""
    backoff_cap_s: float = 30.0
    """Upper bound in seconds of any reconnect delay."""
    link_probe_s: float = 2.0
    """Seconds between reachability probes (one TCP connect to the speech host) while waiting to reconnect after
    the host could not be reached; a probe that connects ends the wait at once. 0 turns probing off."""
    connect_timeout_s: float = 10.0
    """Seconds allowed for TCP connect plus WebSocket handshake."""


class UploadSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    queue_dir: str = "/var/lib/medisync-agent/uploads"
    """Folder of the on-disk upload queue (survives reboots)."""
    retention_hours: float = 24.0
    """Hours a WAV is kept after its upload was confirmed, then deleted."""
    backoff_first_s: float = 5.0
    """Upper bound in seconds of the first retry delay after a failed upload."""
    backoff_cap_s: float = 900.0
    """Upper bound in seconds of any retry delay."""
    max_bytes: int = 500 * 1024 * 1024
    """Largest file the recordings endpoint accepts, in bytes; larger visits are encoded to MP3 first."""


class DaemonSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    control_socket: str = "/run/medisync-agent/control.sock"
    """Path of the Unix control socket (mode 0660: owner and group may start and stop visits)."""
    metrics_address: str = ""
    """``host:port`` for Prometheus metrics, e.g. ``127.0.0.1:9510``; empty disables metrics."""
    stop_timeout_s: float = 20.0
    """Seconds a SIGTERM may take: archive finished, queue persisted, then exit."""
    device_retry_cap_s: float = 10.0
    """Upper bound in seconds between attempts to reopen a lost microphone."""


class MicSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The microphone health detector (:mod:`agent.audio.mic_health`): a microphone that went deaf is noticed.

    A condition is raised when it has held for ``raise_s`` (the level ones judged over the last ``window_s``), and
    cleared when its opposite, with the hysteresis margin, has held for ``clear_s``. With the defaults digital
    silence is raised ~2.6 s after it began, clipping ~1.6 s, a device that delivers nothing 2 s."""

    silence_dbfs: float = -55.0
    """RMS level in dBFS (full-scale square = 0) below which the input counts as silent or too low for speech
    (speech at a desk is -40 to -20 dBFS; a muted or disconnected input is below -90). A -60 dBFS tone is too low."""
    hysteresis_db: float = 6.0
    """Decibels above ``silence_dbfs`` the level must reach before a silent microphone counts as fixed."""
    clip_dbfs: float = -0.1
    """Sample magnitude in dBFS at or above which a sample counts as clipped (full scale is 0 dBFS)."""
    clip_share: float = 0.01
    """Share of clipped samples over ``window_s`` (0 to 1) that means the signal clips; it clears below half of it."""
    window_s: float = 1.0
    """Seconds of audio over which the level and the clipped share are judged."""
    raise_s: float = 1.5
    """Seconds the level or clipping condition must hold before it is raised. Above ``window_s``, a single bang
    shorter than ``raise_s - window_s`` never raises clipping."""
    clear_s: float = 2.0
    """Seconds a raised condition's opposite (beyond the hysteresis margin) must hold before it is cleared."""
    no_data_s: float = 2.0
    """Seconds without any audio block from the device before it counts as delivering nothing."""
    no_speech_s: float = 60.0
    """Seconds of a visit with sound present (not silent) but no speech from the voice gate before it is raised."""


class DeviceSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    state_hook: tuple[str, ...] = ()
    """Command run on each device state change (idle, recording, paused, offline, uploading, error, audio warnings),
    as an argv list run without a shell, e.g. ``["/usr/local/bin/led-hook", "--pin", "17"]``: the event's JSON
    line on stdin, the state in ``MEDISYNC_STATE``. Empty: no hook. It runs as the service, inside its sandbox (no
    GPIO devices: a LED script runs as its own service, see ``systemd/examples/``)."""
    state_hook_timeout_s: float = 5.0
    """Seconds a state hook may run before it is killed (and a WARNING logged)."""


class VisitSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    require_consent: bool = False
    """Refuse to start recording a visit until the patient's consent was asked (``--consent given`` or
    ``declined``); a start without it exits 77 (EX_NOPERM). Off: ``not-asked`` is assumed and audited as such."""


class AuditSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    directory: str = ""
    """Folder of the visit audit trail (``audit.jsonl``, 0600 in a 0700 folder); empty: the folder ``audit`` beside
    ``archive.directory`` (``/var/lib/medisync-agent/audit`` by default)."""
    rotate_bytes: int = 1024 * 1024
    """Size in bytes at which ``audit.jsonl`` is renamed to ``audit.jsonl.1`` (older ones shift up) and a new one
    begun."""
    keep_files: int = 9
    """Rotated audit files kept (``audit.jsonl.1`` to ``.N``), a count; the oldest beyond it is deleted."""


class AgentSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    audio: AudioSettings = msgspec.field(default_factory=AudioSettings)
    vad: VadSettings = msgspec.field(default_factory=VadSettings)
    archive: ArchiveSettings = msgspec.field(default_factory=ArchiveSettings)
    api: ApiSettings = msgspec.field(default_factory=ApiSettings)
    stream: StreamSettings = msgspec.field(default_factory=StreamSettings)
    upload: UploadSettings = msgspec.field(default_factory=UploadSettings)
    daemon: DaemonSettings = msgspec.field(default_factory=DaemonSettings)
    device: DeviceSettings = msgspec.field(default_factory=DeviceSettings)
    mic: MicSettings = msgspec.field(default_factory=MicSettings)
    visit: VisitSettings = msgspec.field(default_factory=VisitSettings)
    audit: AuditSettings = msgspec.field(default_factory=AuditSettings)
