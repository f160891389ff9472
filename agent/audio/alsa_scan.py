"""Keep PortAudio's ALSA device scan from leaving libraries behind (issue 11: the daemon's memory).

PortAudio's ALSA host API, when it initialises (``import sounddevice``, a re-scan), opens every PCM the ALSA
configuration names -- with ``libasound2-plugins`` installed: ``a52``, ``jack``, ``speex``, ``upmix`` ... -- in both
directions, to see whether it captures or plays. Most fail to open; alsa-lib keeps each plugin's shared object in its
module cache anyway, until ``snd_config_update_free_global`` empties the cache (PortAudio calls it only in
``Pa_Terminate``).

:func:`release_scan_plugins` calls it right after a scan: the device list PortAudio built stays as it is (its names
are PortAudio's own copies), the configuration is read again at the next ``snd_pcm_open``, and a module in use by
an open PCM is kept (alsa-lib unloads only unreferenced ones).

Unloading a plugin does not unload what it linked, though: the AC-3 encoder ``a52`` links libavcodec, which pulls in
x265, glib/gio (through librsvg), libmount, libnuma ...; glibc cannot unload several of them (``NODELETE``, unique
symbols), and they stayed resident (2.8 MB here) in a process that never plays AC-3. :func:`hide_playback_only_pcms`
runs before the scan: it loads alsa-lib's global configuration (the system's own, with ``/etc/asound.conf`` and
``~/.asoundrc``) and deletes from that in-memory copy every PCM definition of a type that cannot capture
(:data:`PLAYBACK_ONLY_TYPES`), wherever it is: ``pcm.a52``, an installer's ``pcm.spdif_ac3 { type a52 ... }``, the
playback half of an ``asym`` default. The scan then fails to open them without loading anything -- opening them for
capture fails anyway -- and every PCM that can capture is listed as before, under the same name, so ``mic:<name>``
finds the same device. The copy lives until :func:`release_scan_plugins` frees it; streams opened afterwards read
the files again, untouched. Only playback devices built on such a PCM drop out of PortAudio's device list, and the
agent only captures.

Call both only when no stream is being opened or closed on another thread (the scan itself has the same rule).
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

LIBASOUND = "libasound.so.2"
"""alsa-lib's soname; PortAudio on Linux links it."""

PLAYBACK_ONLY_TYPES = frozenset({"a52"})
"""ALSA PCM plugin types that refuse to open for capture (alsa-plugins' ``a52``: "a52 is only for playback") and
link libraries that stay resident once loaded. Other plugins' modules unload cleanly or are needed to capture."""

TOP_LEVELS = (b"pcm", b"pcm_slave")
"""The configuration trees where PCMs (and slave PCM definitions) are defined."""

_COMPOUND = 1024
"""``SND_CONFIG_TYPE_COMPOUND``."""


def _alsa(load: bool) -> ctypes.CDLL | None:
    """alsa-lib, loaded if ``load`` (else only if already loaded); None where there is none."""
    try:
        alsa = ctypes.CDLL(LIBASOUND, mode=os.RTLD_LOCAL if load else os.RTLD_NOLOAD)
    except OSError:
        log.debug("no %s: no ALSA configuration to prune or release", LIBASOUND)
        return None
    alsa.snd_config_iterator_first.restype = ctypes.c_void_p
    alsa.snd_config_iterator_first.argtypes = [ctypes.c_void_p]
    alsa.snd_config_iterator_next.restype = ctypes.c_void_p
    alsa.snd_config_iterator_next.argtypes = [ctypes.c_void_p]
    alsa.snd_config_iterator_end.restype = ctypes.c_void_p
    alsa.snd_config_iterator_end.argtypes = [ctypes.c_void_p]
    alsa.snd_config_iterator_entry.restype = ctypes.c_void_p
    alsa.snd_config_iterator_entry.argtypes = [ctypes.c_void_p]
    alsa.snd_config_get_type.argtypes = [ctypes.c_void_p]
    alsa.snd_config_search.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    alsa.snd_config_get_string.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p)]
    alsa.snd_config_get_id.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p)]
    alsa.snd_config_delete.argtypes = [ctypes.c_void_p]
    alsa.snd_config_search_definition.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                                  ctypes.POINTER(ctypes.c_void_p)]  # fmt: skip
    return alsa


def _children(alsa: ctypes.CDLL, node: int) -> list[int]:
    """The members of a compound configuration node (a list, so the caller may delete them)."""
    out: list[int] = []
    it, end = alsa.snd_config_iterator_first(node), alsa.snd_config_iterator_end(node)
    while it != end:
        out.append(alsa.snd_config_iterator_entry(it))
        it = alsa.snd_config_iterator_next(it)
    return out


def _string(alsa: ctypes.CDLL, node: int, key: bytes) -> str | None:
    """The string value at ``key`` under ``node``, or None (absent, or not a string)."""
    found, value = ctypes.c_void_p(), ctypes.c_char_p()
    if alsa.snd_config_search(node, key, ctypes.byref(found)) < 0 or found.value is None:
        return None
    if alsa.snd_config_get_string(found, ctypes.byref(value)) < 0 or value.value is None:
        return None
    return value.value.decode(errors="replace")


def _prune(alsa: ctypes.CDLL, node: int, path: str, hidden: list[str]) -> None:
    """Delete every compound under ``node`` (``node`` itself excluded) whose ``type`` is playback-only."""
    for child in _children(alsa, node):
        if alsa.snd_config_get_type(child) != _COMPOUND:
            continue
        ident = ctypes.c_char_p()
        alsa.snd_config_get_id(child, ctypes.byref(ident))
        name = f"{path}.{(ident.value or b'?').decode(errors='replace')}"
        if _string(alsa, child, b"type") in PLAYBACK_ONLY_TYPES:
            if alsa.snd_config_delete(child) >= 0:
                hidden.append(name)
            continue
        _prune(alsa, child, name, hidden)


def hide_playback_only_pcms() -> list[str]:
    """Load alsa-lib's global configuration and delete, in that in-memory copy, the PCM definitions that cannot
    capture (:data:`PLAYBACK_ONLY_TYPES`); the names hidden (``pcm.a52`` ...). Nothing where there is no alsa-lib or
    its configuration does not load (the scan will report that itself)."""
    alsa = _alsa(load=True)
    if alsa is None:
        return []
    result = int(alsa.snd_config_update())
    if result < 0:
        log.debug("ALSA configuration did not load (error %d): nothing hidden from the device scan", result)
        return []
    top = ctypes.c_void_p.in_dll(alsa, "snd_config")
    hidden: list[str] = []
    for level in TOP_LEVELS:
        node = ctypes.c_void_p()
        if top.value and alsa.snd_config_search(top, level, ctypes.byref(node)) >= 0 and node.value:
            _prune(alsa, node.value, level.decode(), hidden)
    if hidden:
        log.debug("hidden from the device scan (they cannot capture): %s", ", ".join(hidden))
    return hidden


def release_scan_plugins() -> bool:
    """Free alsa-lib's global configuration and unload the plugin modules no open PCM uses; False where there is
    no alsa-lib (PortAudio built without ALSA, other systems): nothing to release there."""
    alsa = _alsa(load=False)
    if alsa is None:
        return False
    result = int(alsa.snd_config_update_free_global())
    if result < 0:
        log.warning("ALSA did not release its configuration after the device scan (error %d)", result)
    return result >= 0


def pcm_type(name: str) -> str | None:
    """The plugin ``type`` of the ALSA PCM ``name`` as alsa-lib would open it (``pulse``, ``pipewire``, ``hw``,
    ``plug``, ``dsnoop`` ...): its definition in the global configuration, expanded the way ``snd_pcm_open`` does
    (aliases such as ``default`` -> ``cards.pcm.default``, arguments, and the configuration's hooks: the PulseAudio
    plugin makes ``default`` a ``pulse`` PCM only while a server runs). None where there is no alsa-lib, no such
    definition (a PortAudio name like ``USB Audio: - (hw:1,0)`` is not one) or no string ``type``. Leaves the
    configuration loaded, as the stream's open would; call it where a scan may run (see the module docstring)."""
    alsa = _alsa(load=True)
    if alsa is None or int(alsa.snd_config_update()) < 0:
        return None
    top = ctypes.c_void_p.in_dll(alsa, "snd_config")
    found = ctypes.c_void_p()
    if not top.value or alsa.snd_config_search_definition(top, b"pcm", name.encode(), ctypes.byref(found)) < 0:
        return None
    try:
        return _string(alsa, found.value or 0, b"type")
    finally:
        alsa.snd_config_delete(found)  # an expanded copy, the caller's to free
