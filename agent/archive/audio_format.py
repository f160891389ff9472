"""Which audio a file holds, judged by its content (never its name): the formats MediSync's recordings endpoint takes.

* WAV: ``RIFF`` .. ``WAVE``, a ``fmt `` chunk with sane fields, then a ``data`` chunk with at least one byte;
* MP3: an MPEG audio frame header at the start, or an ID3v2 tag followed by one (and a second frame where the
  first one's length says it must be, when the file is long enough);
* M4A: an ISO media file whose first box is ``ftyp`` with an audio brand (``M4A ``, ``M4B ``, ...), or with a
  generic ISO brand and a ``moov`` box holding a sound track and no video track.

Pure: :func:`sniff` reads through a ``read_at(offset, size) -> bytes`` callable, so tests pass bytes and the
commands pass a file descriptor. :class:`NotAudio` carries a one-line reason for a person.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable

from agent.archive.wavfmt import riff_chunks

ReadAt = Callable[[int, int], bytes]

_MAX_CHUNKS = 64
"""Chunks or boxes walked before giving up: real files put what we look for among the first few."""


class AudioFormat(enum.StrEnum):
    WAV = "wav"
    MP3 = "mp3"
    M4A = "m4a"

    @property
    def suffix(self) -> str:
        return "." + self.value


class NotAudio(ValueError):
    """The content is not WAV, MP3 or M4A audio; ``str()`` says why in one line."""


def sniff(read_at: ReadAt, size: int) -> AudioFormat:
    """The format of a file of ``size`` bytes; NotAudio if it is none of WAV, MP3, M4A."""
    head = read_at(0, 12)
    if len(head) < 12:
        raise NotAudio("too short to be an audio file")
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        _check_wav(read_at, size)
        return AudioFormat.WAV
    if head[4:8] == b"ftyp":
        _check_m4a(read_at, size)
        return AudioFormat.M4A
    if head[:3] == b"ID3" or _frame_length(head[:4]) is not None:
        _check_mp3(read_at, size)
        return AudioFormat.MP3
    raise NotAudio("not a WAV, MP3 or M4A file (judged by its content, not its name)")


# --- WAV ----------------------------------------------------------------------------------------------------------


def _check_wav(read_at: ReadAt, size: int) -> None:
    has_fmt = False
    for chunk in riff_chunks(read_at, limit=_MAX_CHUNKS):
        if chunk.chunk_id == b"fmt ":
            _check_wav_fmt(read_at(chunk.body, 16) if chunk.size >= 16 else b"")
            has_fmt = True
        elif chunk.chunk_id == b"data":
            if not has_fmt:
                raise NotAudio("WAV file without a format chunk before its data")
            if size <= chunk.body:
                raise NotAudio("WAV file without any audio data")
            return
    raise NotAudio("WAV file without a data chunk")


def _check_wav_fmt(fields: bytes) -> None:
    if len(fields) < 16:
        raise NotAudio("WAV file with a truncated format chunk")
    _encoding, channels, rate, _byte_rate, block_align, _bits = struct.unpack("<HHIIHH", fields)
    if not 1 <= channels <= 32 or not 1000 <= rate <= 768_000 or block_align == 0:
        raise NotAudio("WAV file with an impossible format (channels, rate or block size)")


# --- MP3 ----------------------------------------------------------------------------------------------------------

_BITRATES_KBPS = {  # (MPEG-1?, layer) -> bitrate index 1..14
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
"""Version bits (3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5) -> sample rates by index."""


def _frame_length(header: bytes) -> int | None:
    """Bytes of the MPEG audio frame starting with ``header`` (4 bytes), or None if it is no valid frame header."""
    if len(header) < 4:
        return None
    word = int.from_bytes(header[:4], "big")
    version, layer_bits = (word >> 19) & 3, (word >> 17) & 3
    bitrate_index, rate_index, padding = (word >> 12) & 15, (word >> 10) & 3, (word >> 9) & 1
    if word >> 21 != 0x7FF or version == 1 or layer_bits == 0 or bitrate_index in (0, 15) or rate_index == 3:
        return None  # no sync, reserved version/layer, free-format or bad bitrate, reserved rate
    layer = 4 - layer_bits
    mpeg1 = version == 3
    bitrate = _BITRATES_KBPS[(mpeg1, layer)][bitrate_index - 1] * 1000
    rate = _RATES[version][rate_index]
    if layer == 1:
        return (12 * bitrate // rate + padding) * 4
    return (144 if layer == 2 or mpeg1 else 72) * bitrate // rate + padding


def _check_mp3(read_at: ReadAt, size: int) -> None:
    offset = 0
    head = read_at(0, 10)
    if head[:3] == b"ID3":
        if len(head) < 10 or any(b & 0x80 for b in head[6:10]):
            raise NotAudio("MP3 file with a corrupt ID3 tag")
        tag = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
        offset = 10 + tag + (10 if head[5] & 0x10 else 0)  # header, tag, optional footer
    length = _frame_length(read_at(offset, 4))
    if length is None:
        raise NotAudio("MP3 file without an MPEG audio frame" + (" after its ID3 tag" if offset else ""))
    following = offset + length
    if following + 4 <= size and _frame_length(read_at(following, 4)) is None:
        raise NotAudio("not an MP3 file (a frame header is not followed by another frame)")


# --- M4A ----------------------------------------------------------------------------------------------------------

AUDIO_BRANDS = frozenset({b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "})
ISO_BRANDS = frozenset({b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"dash", b"3gp4", b"3gp5",
                        b"3gp6", b"3g2a", b"MSNV"})  # fmt: skip
"""Brands that say "some ISO media file": audio only if its tracks say so."""


def _boxes(read_at: ReadAt, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, body offset, body end) of the boxes between ``start`` and ``end``."""
    found: list[tuple[bytes, int, int]] = []
    offset = start
    while offset + 8 <= end and len(found) < _MAX_CHUNKS:
        header = read_at(offset, 16)
        if len(header) < 8:
            break
        box_size, box_type = struct.unpack(">I4s", header[:8])
        body = offset + 8
        if box_size == 1 and len(header) >= 16:
            box_size, body = struct.unpack(">Q", header[8:16])[0], offset + 16
        elif box_size == 0:
            box_size = end - offset  # to the end of the enclosing box
        if box_size < body - offset:
            break
        found.append((box_type, body, min(offset + box_size, end)))
        offset += box_size
    return found


def _check_m4a(read_at: ReadAt, size: int) -> None:
    boxes = _boxes(read_at, 0, size)
    if not boxes or boxes[0][0] != b"ftyp":
        raise NotAudio("not an M4A file (no leading ftyp box)")
    _, body, end = boxes[0]
    brands_bytes = read_at(body, min(end - body, 256))
    brands = {brands_bytes[i : i + 4] for i in range(0, len(brands_bytes) - 3, 4) if i != 4}  # skip minor version
    if brands & AUDIO_BRANDS:
        return
    if not brands & ISO_BRANDS:
        raise NotAudio("an ISO media file without an audio brand (not M4A)")
    handlers = _track_handlers(read_at, boxes)
    if b"soun" not in handlers or b"vide" in handlers:
        raise NotAudio("an MP4 file that is not audio only (no sound track, or a video track)")


def _track_handlers(read_at: ReadAt, top: list[tuple[bytes, int, int]]) -> set[bytes]:
    handlers = set()
    for box_type, body, end in top:
        if box_type != b"moov":
            continue
        for trak_type, trak_body, trak_end in _boxes(read_at, body, end):
            if trak_type != b"trak":
                continue
            for mdia_type, mdia_body, mdia_end in _boxes(read_at, trak_body, trak_end):
                if mdia_type != b"mdia":
                    continue
                for hdlr_type, hdlr_body, _ in _boxes(read_at, mdia_body, mdia_end):
                    if hdlr_type == b"hdlr":
                        handlers.add(read_at(hdlr_body + 8, 4))  # version/flags, pre_defined, handler type
    return handlers
