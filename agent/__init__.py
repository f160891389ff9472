"""MediSync Edge Agent."""

__version__ = "0.1.0"

SAMPLE_RATE = 16_000
"""Timeline rate in samples per second: one timeline index is 1/16000 s."""
BYTES_PER_SAMPLE = 2
"""s16le mono."""
