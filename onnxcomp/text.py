"""Text from model files made safe for a terminal."""

from __future__ import annotations


def printable(text: str) -> str:
    """`text` with every non-printable character written as its Python escape.

    Control characters (ESC, BEL, CSI, newlines, tabs) and bidirectional overrides come out as
    `\\x1b`, `\\n`, `\\u202e`; printable text, any script, stays as it is. Names and messages
    that come from a model file could otherwise retitle or clear the terminal, or break a table
    or a one-line error across lines.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
