"""Word error rate of a transcript against a reference, and a count of utterances heard twice (pure code).

Used by the demo's summary (live transcript vs the bundled dialogue's script) and by the recogniser's tests.

Normalisation before comparing, the same for reference and hypothesis (:func:`normalise`):

- case is ignored (everything lower case);
- punctuation is dropped: ``.,?!;:"()[]`` and the like vanish; hyphens, slashes and dashes separate words
  (``follow-up`` is two words); an apostrophe inside a word is kept (``don't`` is one word, different from
  ``do not``: contractions are not expanded);
- numbers are words: ``2`` -> ``two``, ``14`` -> ``fourteen``, ``1,200`` -> ``one thousand two hundred``,
  ``2nd`` -> ``second``, ``1.5`` -> ``one point five``, ``%`` -> ``percent``.

WER = (substitutions + deletions + insertions) / reference words, from a minimum edit distance over words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]  # fmt: skip
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred")]
_ORDINAL = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth", "nine": "ninth",
            "twelve": "twelfth"}  # fmt: skip
_NUMBER = re.compile(r"(\d[\d,]*)(?:\.(\d+))?(st|nd|rd|th)?")
_TOKEN = re.compile(r"\d[\d,]*(?:\.\d+)?(?:st|nd|rd|th)?|[a-z]+(?:'[a-z]+)*|%")


def number_words(n: int) -> list[str]:
    """Cardinal words of a non-negative integer, without "and": 1203 -> one thousand two hundred three."""
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + ([_ONES[n % 10]] if n % 10 else [])
    for scale, name in _SCALES:
        if n >= scale:
            rest = number_words(n % scale) if n % scale else []
            return [*number_words(n // scale), name, *rest]
    raise AssertionError("unreachable")


def _ordinal(words: list[str]) -> list[str]:
    last = words[-1]
    if last in _ORDINAL:
        last = _ORDINAL[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return [*words[:-1], last]


def _number_token(token: str) -> list[str]:
    match = _NUMBER.fullmatch(token)
    if match is None:
        return [token]
    whole, fraction, suffix = match.groups()
    digits = whole.replace(",", "")
    if not digits:
        return []
    words = number_words(int(digits))
    if fraction:
        words += ["point", *(_ONES[int(d)] for d in fraction)]
    return _ordinal(words) if suffix else words


def normalise(text: str) -> list[str]:
    """The words of ``text`` as compared (see the module's docstring)."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    words: list[str] = []
    for token in _TOKEN.findall(text):
        if token == "%":
            words.append("percent")
        elif token[0].isdigit():
            words += _number_token(token)
        else:
            words.append(token)
    return words


@dataclass(frozen=True, slots=True)
class WordErrors:
    reference_words: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """WER as a fraction (may exceed 1 with many insertions); 0 for an empty reference and hypothesis."""
        if self.reference_words == 0:
            return 0.0 if self.errors == 0 else 1.0
        return self.errors / self.reference_words

    def __add__(self, other: WordErrors) -> WordErrors:
        return WordErrors(self.reference_words + other.reference_words, self.substitutions + other.substitutions,
                          self.deletions + other.deletions, self.insertions + other.insertions)  # fmt: skip


def word_errors(reference: str, hypothesis: str) -> WordErrors:
    """Minimum edit distance over normalised words, split into substitutions, deletions and insertions."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    # cost[i][j]: (errors, subs, dels, ins) aligning ref[:i] with hyp[:j]; ties prefer fewer errors, then subs.
    previous = [(j, 0, 0, j) for j in range(len(hyp) + 1)]
    for i in range(1, len(ref) + 1):
        current = [(i, 0, i, 0)]
        for j in range(1, len(hyp) + 1):
            e, s, d, n = previous[j - 1]
            same = ref[i - 1] == hyp[j - 1]
            diagonal = (e, s, d, n) if same else (e + 1, s + 1, d, n)
            e, s, d, n = previous[j]
            deletion = (e + 1, s, d + 1, n)
            e, s, d, n = current[j - 1]
            insertion = (e + 1, s, d, n + 1)
            current.append(min(diagonal, deletion, insertion))
        previous = current
    _, subs, dels, ins = previous[-1]
    return WordErrors(len(ref), subs, dels, ins)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER of ``hypothesis`` against ``reference`` as a fraction (0.05 is 5 %)."""
    return word_errors(reference, hypothesis).rate


def _common_in_order(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two word lists."""
    previous = [0] * (len(b) + 1)
    for word in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if word == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def copies_heard(utterance: str, hypothesis: str) -> int:
    """How often ``utterance`` occurs in ``hypothesis``: non-overlapping windows of as many words as the utterance
    that hold more than half of its words in order (tolerates recognition errors; a split utterance counts once)."""
    words, heard = normalise(utterance), normalise(hypothesis)
    need, width = len(words) / 2, len(words)
    count, i = 0, 0
    while words and i < len(heard):
        held = _common_in_order(words, heard[i:i + width])
        if held <= need:
            i += 1
            continue
        # slide the window onto the occurrence while that holds more of it, then step past it
        while i + 1 < len(heard) and (better := _common_in_order(words, heard[i + 1:i + 1 + width])) > held:
            i, held = i + 1, better
        count += 1
        i += width
    return count


def repeated_utterances(utterances: list[str], hypothesis: str) -> int:
    """Number of ``utterances`` (the script) whose words occur more than once in ``hypothesis`` (the transcript)."""
    return sum(1 for utterance in utterances if copies_heard(utterance, hypothesis) > 1)
