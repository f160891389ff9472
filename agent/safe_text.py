"""Text from elsewhere made safe for a terminal or a log line. Pure.

A server's transcript, warning or error text is shown to a person; a terminal obeys control characters and escape
sequences in it (set the window title, clear the screen, move the cursor, rewrite the clipboard with OSC 52) and
bidirectional overrides make a line read differently from what it holds. So before such text reaches a terminal
or a log it goes through :func:`clean_line` (one line: every line break becomes a space) or :func:`clean_text`
(newlines and tabs kept). Removed: whole escape sequences (CSI, OSC, DCS/SOS/PM/APC strings with their payload,
two-byte ESC sequences) in their 7-bit and 8-bit (C1) forms, every other C0 and C1 control character and DEL,
bidi embedding/override/isolate marks, and the Unicode line and paragraph separators.
"""

from __future__ import annotations

import logging
import re
from typing import Any

_STRING_SEQUENCE = r"(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)"
"""OSC, DCS, SOS, PM, APC with their payload up to the terminator (BEL, ESC \\ or ST)."""
_CSI = r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]"
_ESCAPE = r"\x1b[\x20-\x2f]*[\x30-\x7e]?"
"""Any other escape (two-byte forms like ESC c, charset designations) or a lone ESC."""
_SEQUENCES = re.compile("|".join((_STRING_SEQUENCE, _CSI, _ESCAPE)))
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_BREAKS = "\u2028\u2029"
_CONTROLS_LINE = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}{_BREAKS}]")
_CONTROLS_TEXT = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}{_BREAKS}]")
_LINE_BREAKS = re.compile(r"[\r\n\t\v\f\x85\u2028\u2029]+")


def clean_text(text: str) -> str:
    """``text`` without escape sequences or control characters; newlines and tabs stay (``\\r\\n`` -> ``\\n``)."""
    text = _SEQUENCES.sub("", text.replace("\r\n", "\n"))
    return _CONTROLS_TEXT.sub("", text)


def clean_line(text: str) -> str:
    """``text`` as one line: escape sequences and control characters removed, line breaks and tabs -> a space."""
    text = _LINE_BREAKS.sub(" ", _SEQUENCES.sub("", text))
    return _CONTROLS_LINE.sub("", text)


class SafeFormatter(logging.Formatter):
    """Log records as one clean line each (:func:`clean_line`); a traceback keeps its lines (:func:`clean_text`).

    Messages carry text from servers (warnings, error answers, close reasons): a newline in one must not forge a
    log line, an escape sequence must not reach the terminal of a person reading the log.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        return clean_line(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return clean_text(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return clean_text(super().formatStack(stack_info))
