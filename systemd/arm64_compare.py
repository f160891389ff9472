"""Compare two 16-bit mono WAVs sample by sample (used by systemd/arm64-check.sh: arm64 vs native ``record``).

Prints one line: sample count, how many samples differ and by how much at most. Exits 1 when the lengths differ
or any sample differs by more than ``--tolerance`` (default 1 LSB: soxr rounds differently on aarch64).
Independent of the agent's own WAV code: the standard library's ``wave`` reads both files.
"""

from __future__ import annotations

import argparse
import sys
import wave

import numpy as np


def samples(path: str) -> np.ndarray:
    with wave.open(path, "rb") as w:
        if (w.getsampwidth(), w.getnchannels()) != (2, 1):
            raise SystemExit(f"{path}: not 16-bit mono")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int32)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("expected")
    parser.add_argument("actual")
    parser.add_argument("--tolerance", type=int, default=1, help="largest allowed difference in LSB (default 1)")
    args = parser.parse_args(argv)
    expected, actual = samples(args.expected), samples(args.actual)
    if len(expected) != len(actual):
        print(f"{len(actual):,} samples, native {len(expected):,}")
        return 1
    diff = np.abs(expected - actual)
    worst = int(diff.max()) if len(diff) else 0
    print(f"{len(actual):,} samples, {int(np.count_nonzero(diff)):,} differ, by at most {worst} LSB")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
