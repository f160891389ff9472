"""MediSync Edge Agent."""

import os

# numpy's OpenBLAS otherwise starts a thread per core, and after every matrix product (the 44.1 and 22.05 kHz
# resampler, agent/audio/decimate.py) that thread busy-waits for more work: on the fast file path it burned a
# second core, 16 instead of 7 CPU-s per audio-hour and 325x instead of 503x real time (benchmarks/NOTES.md). The
# agent's products are small, so one thread is also the fastest. Set here, before anything imports numpy; a value
# the environment gives wins (the systemd unit sets the same).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"

SAMPLE_RATE = 16_000
"""Timeline rate in samples per second: one timeline index is 1/16000 s."""
BYTES_PER_SAMPLE = 2
"""s16le mono."""
