"""Let go of the ALSA plugins PortAudio's device scan leaves loaded (issue 11: the daemon's memory).

PortAudio's ALSA host API, when it initialises (``import sounddevice``, a re-scan), opens every PCM the ALSA
configuration names -- with ``libasound2-plugins`` installed: ``a52`` (libavcodec and what it links: x265, aom,
rsvg ...), ``jack``, ``speex``, ``upmix`` ... -- to see whether it captures or plays. Most fail to open; alsa-lib
keeps each plugin's shared object in its module cache anyway, until ``snd_config_update_free_global`` empties the
cache (PortAudio calls it only in ``Pa_Terminate``). Here about 10 MB of the daemon's resident memory.

:func:`release_scan_plugins` calls it right after a scan: the device list PortAudio built stays as it is (its names
are PortAudio's own copies), the configuration is read again at the next ``snd_pcm_open``, and a module in use by
an open PCM is kept (alsa-lib unloads only unreferenced ones). Call it only when no stream is being opened or
closed on another thread (the scan itself has the same rule).
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

LIBASOUND = "libasound.so.2"
"""alsa-lib's soname; PortAudio on Linux links it, so it is already loaded when this runs."""


def release_scan_plugins() -> bool:
    """Free alsa-lib's global configuration and unload the plugin modules no open PCM uses; False where there is
    no alsa-lib (PortAudio built without ALSA, other systems): nothing to release there."""
    try:
        alsa = ctypes.CDLL(LIBASOUND, mode=os.RTLD_NOLOAD)
    except OSError:
        log.debug("no %s loaded: no ALSA plugins to release", LIBASOUND)
        return False
    result = int(alsa.snd_config_update_free_global())
    if result < 0:
        log.warning("ALSA did not release its configuration after the device scan (error %d)", result)
    return result >= 0
