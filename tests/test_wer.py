"""Word error rate and the repeated-utterance count (agent/wer.py): pure functions, no recogniser needed."""

from __future__ import annotations

import pytest

from agent.commands.demo_words import REPEATED_ROW, WER_ROW, check_transcript, script_utterances, words_of_line
from agent.wer import (
    WordErrors,
    copies_heard,
    normalise,
    number_words,
    repeated_utterances,
    word_error_rate,
    word_errors,
)


def test_normalise_ignores_case_and_punctuation_and_keeps_inner_apostrophes() -> None:
    assert normalise("Good morning. What brings you in today?") == ["good", "morning", "what", "brings", "you", "in",
                                                                     "today"]  # fmt: skip
    assert normalise("“Don’t” — follow-up, (rest); OK!") == ["don't", "follow", "up", "rest", "ok"]
    assert normalise("  ... ") == []


@pytest.mark.parametrize(("text", "words"), [
    ("2 weeks", "two weeks"),
    ("14 days", "fourteen days"),
    ("40", "forty"),
    ("99", "ninety nine"),
    ("100", "one hundred"),
    ("1,203", "one thousand two hundred three"),
    ("2026", "two thousand twenty six"),
    ("3000000", "three million"),
    ("1.5 mg", "one point five mg"),
    ("2nd", "second"),
    ("21st", "twenty first"),
    ("12th", "twelfth"),
    ("20th", "twentieth"),
    ("5%", "five percent"),
])  # fmt: skip
def test_numbers_are_compared_as_words(text: str, words: str) -> None:
    assert normalise(text) == words.split()


def test_number_words_zero_and_scales() -> None:
    assert number_words(0) == ["zero"]
    assert number_words(1_000_001) == ["one", "million", "one"]


def test_word_errors_counts_substitutions_deletions_and_insertions() -> None:
    reference = "any fever or shortness of breath"
    assert word_errors(reference, "Any fever or shortness of breath?") == WordErrors(6, 0, 0, 0)
    assert word_errors(reference, "any femur or shortness of breath") == WordErrors(6, 1, 0, 0)
    assert word_errors(reference, "any fever or shortness breath") == WordErrors(6, 0, 1, 0)
    assert word_errors(reference, "any fever or or shortness of breath") == WordErrors(6, 0, 0, 1)
    assert word_errors(reference, "") == WordErrors(6, 0, 6, 0)
    assert word_error_rate(reference, "any femur or shortness and breath") == pytest.approx(2 / 6)
    assert word_error_rate("two weeks", "2 weeks") == 0.0  # numbers as words on both sides


def test_word_error_rate_edges() -> None:
    assert word_error_rate("", "") == 0.0
    assert word_error_rate("", "hello") == 1.0
    assert word_error_rate("a b", "c d e f") == pytest.approx(2.0)  # insertions can take it above 100 %
    assert (WordErrors(2, 1, 0, 0) + WordErrors(3, 0, 1, 1)) == WordErrors(5, 1, 1, 1)


def test_an_utterance_heard_twice_is_counted_once_per_utterance() -> None:
    script = script_utterances()
    once = " ".join(script)
    assert repeated_utterances(script, once) == 0
    replayed = " ".join(script[:5] + script[3:])  # an outage's replay transcribed again: utterances 4 and 5 doubled
    assert repeated_utterances(script, replayed) == 2
    assert copies_heard(script[3], replayed) == 2 and copies_heard(script[6], replayed) == 1
    back_to_back = " ".join([*script[:5], script[4], *script[5:]])  # one span transcribed twice in a row
    assert repeated_utterances(script, back_to_back) == 1 and copies_heard(script[4], back_to_back) == 2


def test_recognition_errors_and_splits_are_not_counted_as_repeats() -> None:
    script = script_utterances()
    # what the recogniser really made of the dialogue (errors, merged utterances, one split in two segments)
    heard = ("Good morning, what brings you in today? I have had a hike off for about two weeks, and it gets worse "
             "at night. any femur or shortness and breath, a little femur last weekend, but not since then. Let me "
             "listen to your lungs. Please take a deep breath. And once more slowly, is it anything serious? Your "
             "lungs sound clear, it is most likely a lingering viral cough. I suggest hurried in warm water, rest, "
             "and plenty of fluids. Should I come back if it does not improve? Yes, if it lasts a hundred two "
             "weeks, or you get a high fever, call us.")  # fmt: skip
    assert repeated_utterances(script, heard) == 0
    assert word_error_rate(" ".join(script), heard) == pytest.approx(9 / 104)
    short = "And once more, slowly."
    assert copies_heard(short, "and once more slowly") == 1
    assert copies_heard(short, "and once more slowly and once more slowly") == 2
    assert copies_heard(short, "once more, and slowly it is more") == 1  # a stray "more" is not a second copy


def test_demo_rows_score_words_and_say_so_for_the_placeholder() -> None:
    script = ["Any fever or shortness of breath?", "A little fever last weekend."]
    kept = ["any femur or shortness of breath", "a little fever last weekend"]
    check = check_transcript("whisper", kept, kept[:1], script)
    assert check.rows[WER_ROW].startswith("9.1 % (1 errors in 11 words; within the 20 % target)")
    assert check.rows[REPEATED_ROW] == "0" and check.repeated == 0
    assert check.rows["transcript lines sent live / kept"] == "1 / 2"
    doubled = check_transcript("whisper", ["any fever or shortness of breath"] * 2 + [script[1]], [], script)
    assert doubled.repeated == 1 and "ABOVE" in doubled.rows[WER_ROW]
    sent_twice = check_transcript("whisper", script, [script[0], script[0], script[1]], script)
    assert sent_twice.repeated == 1 and "within" in sent_twice.rows[WER_ROW]
    assert words_of_line("[SPEAKER_0 | 0.500 --> 2.800]: Good morning.") == "Good morning."
    placeholder = check_transcript("placeholder", ["[speech 0.500-2.800 s]"], ["[speech 0.500-2.800 s]"], script)
    assert placeholder.rows[WER_ROW].startswith("n/a") and REPEATED_ROW not in placeholder.rows
