"""The rate and channel count a microphone is opened at (issue 11): pure, device facts in, a format out.

A sound server's capture device (PulseAudio, PipeWire) runs at the server's rate (48 kHz) and offers any rate and
channel count to its clients, resampling and downmixing in the server. Asked at PortAudio's default (44.1 kHz for
the ALSA ``pulse`` PCM, 2 channels) the audio was resampled twice, 48 -> 44.1 kHz in the server and 44.1 -> 16 kHz
here (the event loop's FIR, ~13 % of its Python time), and downmixed here. So a sound server's device opens at
16 kHz mono (:data:`SERVER_FORMAT`): the server's resampler does the one conversion, as for ``ffmpeg -f pulse -ar
16000 -ac 1``, and the DSP passes the samples through unchanged.

Every other device keeps its native (default) rate and channel count (at most :data:`MAX_CHANNELS`): a hardware
device (``hw:``, a USB microphone through plain ALSA) cannot convert, and ALSA's ``plug`` layer (``plughw:``) would
convert by linear interpolation, which aliases: the agent's FIR (or soxr) does it better. A rate or channel count
in the source spec (``mic:<name>@48000x1``) always wins, and ``AudioSettings.server_mic_16k = false`` turns the
rule off.

Which devices are a sound server's: on PortAudio's ALSA host API, a PCM whose plugin ``type`` is in
:data:`SERVER_PCM_TYPES` as alsa-lib expands its definition (``pulse``, ``pipewire``, and ``default``/
``sysdefault`` when the configuration routes them to one of those: :func:`agent.audio.alsa_scan.pcm_type`);
PortAudio's own PulseAudio host API, where it is built in. A PCM that only wraps one (an ``asym`` or ``plug``
whose slave is ``pulse``) is not recognised and keeps the native rate: the old behaviour, never a wrong format.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent import SAMPLE_RATE

MAX_CHANNELS = 2
"""Channels asked of a device that offers more (the DSP downmixes to mono)."""
SERVER_FORMAT = (SAMPLE_RATE, 1)
"""(Hz, channels) asked of a sound server's device: the timeline's own format."""
SERVER_PCM_TYPES = frozenset({"pulse", "pipewire"})
"""ALSA PCM plugin types that are a sound server's client (alsa-plugins' ``pulse``, PipeWire's ``pipewire``)."""
SERVER_HOST_APIS = frozenset({"PulseAudio"})
"""PortAudio host APIs that are a sound server's client."""


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What PortAudio and alsa-lib say about one input device."""

    default_rate: int
    """PortAudio's default sample rate for the device, Hz."""
    max_channels: int
    """Input channels the device offers."""
    host_api: str
    """PortAudio host API name (``ALSA``, ``PulseAudio``, ``JACK Audio Connection Kit`` ...)."""
    pcm_type: str | None = None
    """ALSA host API: the device's PCM plugin type (``pulse``, ``hw``, ``plug`` ...); None otherwise or unknown."""


def is_sound_server(host_api: str, pcm_type: str | None) -> bool:
    """True when the device is a sound server's client, which resamples and downmixes in the server."""
    return host_api in SERVER_HOST_APIS or (host_api == "ALSA" and pcm_type in SERVER_PCM_TYPES)


def needs_pcm_type(rate: int | None, channels: int | None, server_16k: bool, host_api: str) -> bool:
    """Whether :func:`open_format` needs :attr:`DeviceFacts.pcm_type` (looking it up loads alsa-lib's
    configuration): only for an ALSA device when the rule is on and the spec leaves rate or channels open."""
    return server_16k and host_api == "ALSA" and (rate is None or channels is None)


def open_format(rate: int | None, channels: int | None, device: DeviceFacts, *, server_16k: bool = True) -> tuple[
        int, int]:  # fmt: skip
    """(Hz, channels) to open ``device`` at: the spec's ``rate``/``channels`` where given; else 16 kHz / mono for a
    sound server's device (when ``server_16k``), the device's default rate / channels (at most 2) for any other."""
    if server_16k and is_sound_server(device.host_api, device.pcm_type):
        native = SERVER_FORMAT
    else:
        native = (device.default_rate, min(MAX_CHANNELS, device.max_channels))
    return rate or native[0], channels or native[1]
