"""Text for the terminal: what comes from a database or a file is printed with its control characters escaped.
No imports beyond the standard library: `hpo.cli` uses it for every error line."""

from __future__ import annotations

# Control characters (C0, DEL, C1), Unicode line/paragraph separators and bidi overrides, shown as escapes: names,
# failure reasons and user attrs come from a database anyone with write access (or plain optuna) fills, and an
# escape sequence or a newline printed raw would clear the terminal or forge lines of output.
_ESCAPES = {**{c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))},
            **{ord(k): v for k, v in {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.items()},
            **{c: f"\\u{c:04x}" for c in (0x2028, 0x2029, *range(0x202a, 0x202f), *range(0x2066, 0x206a))}}


def printable(text: object) -> str:
    """`text` as one terminal-safe line: control characters escaped (a newline as \\n, ESC as \\x1b)."""
    return str(text).translate(_ESCAPES)


def printable_lines(lines: list[str]) -> str:
    """Lines of a table, each made `printable`: a value holding a newline cannot start a line of its own."""
    return "\n".join(map(printable, lines))
