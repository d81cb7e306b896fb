"""Passwords out of everything shown or stored: URLs in messages, study attrs and recorded command lines.

Pure string work, so it also handles what no URL parser accepts (a bad scheme, an unescaped '@' or ':' in the
password): the userinfo runs to the LAST '@' of the URL, and everything after the user name's ':' is secret.
`password=` query parameters (which libpq and SQLAlchemy also accept) are treated the same way.
"""

from __future__ import annotations

import re

MASK = "***"
_QUERY_SECRET = re.compile(r"(?P<key>(?:^|[?&;])(?:password|passwd|pwd|sslpassword)=)(?P<value>[^&;\s]*)", re.I)


def hide_password(url: str, replacement: str | None = MASK) -> str:
    """`url` with its password replaced by `replacement`, or removed (with its ':') when it is None."""
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    at = rest.rfind("@")
    if at > 0 and ":" in rest[:at]:
        user = rest[:at].split(":", 1)[0]
        rest = f"{user}{'' if replacement is None else ':' + replacement}@{rest[at + 1:]}"
    url = head + sep + rest
    if replacement is None:
        url = _QUERY_SECRET.sub(lambda m: m["key"][:1] if m["key"][:1] in "?&;" else "", url)
        return re.sub(r"[?&;]+$", "", re.sub(r"([?&;])[&;]+", r"\1", url))
    return _QUERY_SECRET.sub(lambda m: m["key"] + replacement, url)


def hide_passwords(text: str) -> str:
    """Every URL-like word of `text` (e.g. a command line) with its password masked."""
    return re.sub(r"\S+", lambda m: hide_password(m[0]) if "@" in m[0] or _QUERY_SECRET.search(m[0]) else m[0],
                  text)
