"""What comes from a store (names, errors, configs, values) is shown as text, never acted on:
no Rich markup parsed, no terminal control passed to the terminal, no HTML rendered. Every
printer (status, query, report, progress, the CLI's error lines, the live page) goes through
these helpers, so a hostile value is shown the same visible way everywhere: `visible` and
`one_line` for plain text, `rich_text` for Rich, `json_text` for JSON, `render_html` (Jinja2
with autoescape) for web pages."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jinja2 import Environment
    from rich.text import Text

TEMPLATES = Path(__file__).parent / "runner" / "templates"  # the HTML pages' Jinja2 templates

# What acts instead of showing: C0 and C1 controls and DEL (category Cc), lone surrogates (Cs:
# no terminal or UTF-8 file takes them), and the invisible characters that reorder or hide text
# (the "Trojan Source" bidi controls, zero widths, line and paragraph separators).
_HIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u200b-\u200f\u2028\u2029\u202a-\u202e"
                     "\u2066-\u2069\ufeff]")


# Credentials in a URI quoted by a message: a user (and key) before the host, and the values
# of secret-named query keys, in any letter case.
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/?#\s@]*@", re.IGNORECASE)
_SECRET_VALUE = re.compile(r"(\b[\w-]*(?:secret|passw|token|credential|signature|sas|_key)[\w-]*=)[^&\s'\"]*",
                           re.IGNORECASE)


def redacted(text: str) -> str:
    """`text` with anything credential-shaped in a URI masked: a user and key before the host,
    and the values of secret-named query keys. Every error line the CLI prints goes through it,
    so a credential quoted by a library, a --cluster or $RAY_ADDRESS is never printed."""
    return _SECRET_VALUE.sub(r"\1***", _USERINFO.sub(r"\1***@", text))


def _shown(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(value: object, keep: str = "") -> str:
    """`value` as text whose control characters (ESC, BEL, CR, newlines, C1, bidi overrides)
    are written out as `\\x1b`-style escapes: safe to print on any terminal. Characters in
    `keep` (e.g. "\\n\\t" for a multi-line block) are left as they are."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():  # the common case: nothing to do
        return text
    return _HIDDEN.sub(lambda m: m[0] if m[0] in keep else _shown(m[0]), text)


def one_line(value: object) -> str:
    """`value` on one line: runs of whitespace (newlines included) become one space, then the
    remaining control characters are shown visibly."""
    text = value if isinstance(value, str) else str(value)
    return visible(" ".join(text.split()))


def rich_text(value: object, style: str = "", keep: str = "") -> Text:
    """A Rich `Text` of `value`: Rich never parses it as markup (`[/red]` stays those
    characters) and control characters are shown visibly (but those in `keep`, e.g. "\\n")."""
    from rich.text import Text

    return Text(visible(value, keep), style=style)


def json_text(value: Any, **dumps: Any) -> str:
    """`json.dumps(value, ensure_ascii=False, **dumps)` with every character that `visible`
    would escape written as a JSON `\\uXXXX` escape: the same data for any JSON reader, but
    no DEL, C1 control, bidi override or lone surrogate reaches a terminal or a UTF-8 file
    (json.dumps escapes only C0 controls when it keeps non-ASCII text)."""
    text = json.dumps(value, ensure_ascii=False, **dumps)
    # Outside strings json.dumps writes only ASCII structure and whitespace (the indent's line
    # breaks, kept); a hidden character is inside a string, where \\uXXXX means the same.
    return _HIDDEN.sub(lambda m: m[0] if m[0] in "\n\r\t" else f"\\u{ord(m[0]):04x}", text)


def _finalize(value: Any) -> Any:
    """Every value a template prints, before autoescape: control characters shown visibly
    (line breaks and tabs kept, for the <pre> of a grid file); trusted markup passes as is."""
    from markupsafe import Markup

    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    return visible(value, keep="\n\t")


@functools.lru_cache(maxsize=None)
def html_environment() -> Environment:
    """The one Jinja2 environment of rethink's web pages (the report; the live page to come):
    templates from TEMPLATES, autoescape on for every template whatever its name, undefined
    names an error, control characters in values shown visibly. A template never marks store
    data `|safe`."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, finalize=_finalize,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render_html(template: str, **values: Any) -> str:
    """The page `template` (a file in TEMPLATES) filled with `values`, every one escaped."""
    return html_environment().get_template(template).render(**values)
