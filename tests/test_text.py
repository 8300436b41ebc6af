"""onnxcomp.text.printable: names and messages from a model file, escaped for a terminal.

tests/test_metadata.py checks it on a hostile weight name in `inspect`; here the function itself:
which characters are escaped, how, and that printable text comes back unchanged.
"""

from __future__ import annotations

import pytest

from onnxcomp.text import printable


@pytest.mark.parametrize("text", ["", "fc1.bias", "Conv_0/weight:0", "päivä ελληνικά 日本語", "a b  c", "emoji \U0001f600",
                                  "back\\slash"])
def test_printable_text_is_returned_as_it_is(text):
    assert printable(text) is text


@pytest.mark.parametrize(("text", "expected"), [
    ("\x07bell", "\\x07bell"),
    ("line\rover", "line\\rover"),
    ("del\x7f", "del\\x7f"),
    ("\x00nul", "\\x00nul"),
    ("\u200bzero width", "\\u200bzero width"),
    ("\u2066isolate\u2069", "\\u2066isolate\\u2069"),
    ("tab\tand 日本\n", "tab\\tand 日本\\n"),
    ("\U000e0041tag", "\\U000e0041tag"),
])
def test_each_non_printable_character_becomes_its_python_escape(text, expected):
    assert printable(text) == expected


def test_escaped_text_is_one_printable_line_that_reads_back_as_the_original():
    text = "w\x1b]0;title\x07\n\u202eend"
    escaped = printable(text)
    assert escaped.isprintable() and "\n" not in escaped
    assert escaped.encode("ascii", "backslashreplace").decode("unicode_escape") == text
