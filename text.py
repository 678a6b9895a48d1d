"""What comes from a store (names, errors, configs, values) is shown as text, never acted on:
no Rich markup parsed, no terminal control passed to the terminal, no HTML rendered. Every
printer (status, query, report, progress, the CLI's error lines, the live page) goes through
these helpers, so a hostile value is shown the same visible way everywhere."""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.text import Text

# Invisible characters that reorder or hide text (the "Trojan Source" bidi controls, zero widths).
_FORMAT_CONTROLS = frozenset("\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                             "\u2066\u2067\u2068\u2069\ufeff")


def _shown(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(value: object) -> str:
    """`value` as text whose control characters (ESC, BEL, CR, newlines, C1, bidi overrides)
    are written out as `\\x1b`-style escapes: safe to print on any terminal."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():  # the common case: nothing to do
        return text
    return "".join(
        _shown(c) if (unicodedata.category(c) in ("Cc", "Cs") or c in _FORMAT_CONTROLS) else c
        for c in text
    )


def one_line(value: object) -> str:
    """`value` on one line: runs of whitespace (newlines included) become one space, then the
    remaining control characters are shown visibly."""
    text = value if isinstance(value, str) else str(value)
    return visible(" ".join(text.split()))


def rich_text(value: object, style: str = "") -> Text:
    """A Rich `Text` of `value`: Rich never parses it as markup (`[/red]` stays those
    characters) and control characters are shown visibly."""
    from rich.text import Text

    return Text(visible(value), style=style)
