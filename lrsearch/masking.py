"""Storage URLs made safe to print: no part of a password, whatever the URL's shape.

Works on the text, without parsing the URL the way a driver would: a URL that does not parse, or
whose password holds an unencoded ``@``, ``:``, ``/``, ``?`` or ``#``, must not leak either.

- The password in the user part: everything between the first ``:`` after ``scheme://`` and the
  **last** ``@`` (at worst a little too much is hidden: the host, when the query holds an ``@``).
- A query parameter whose name holds ``pass``, ``pwd``, ``secret`` or ``token`` (``password``,
  ``sslpassword``, ...): its value up to the next ``&name=``, so an unencoded ``&`` or ``;`` in
  it stays hidden too.

Imports nothing heavy: ``launch`` uses it to blot out the password in its workers' lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote, unquote_plus

HIDDEN = "***"
_SECRET_KEY = r"[\w.-]*(?:pass|pwd|secret|token)[\w.-]*"
# The value runs to the next "&name=" (or the end): an "&" not followed by a parameter is its own.
_QUERY_SECRET = re.compile(
    rf"(?i)([?&;]{_SECRET_KEY}=)((?:[^&#]|&(?![\w.-]+=))*)",
)


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe to print.

    Example:
        >>> mask_url("postgresql://me:s3cret@db:5432/lr")
        'postgresql://me:***@db:5432/lr'
        >>> mask_url("postgresql://me:pa@ss@db/lr?sslpassword=x")
        'postgresql://me:***@db/lr?sslpassword=***'
    """
    # The query first: an "@" in a query password must not pass for the end of a user part.
    scheme, sep, rest = _QUERY_SECRET.sub(rf"\1{HIDDEN}", url).partition("://")
    if not sep:
        scheme, rest = "", scheme
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.partition(':')[0]}:{HIDDEN}@{host}"
    return f"{scheme}{sep}{rest}"


def url_secrets(url: str, *, parsed_password: str | None = None) -> tuple[str, ...]:
    """Every spelling of every secret in ``url``, longest first, to blot out of messages.

    Args:
        url: The storage URL as given.
        parsed_password: The password as the driver got it, when it was parsed.
    """
    found = {m.group(2) for m in _QUERY_SECRET.finditer(url)}
    bare = _QUERY_SECRET.sub(rf"\1{HIDDEN}", url)
    _, sep, rest = bare.partition("://")
    userinfo, at, _ = (rest if sep else bare).rpartition("@")
    if at and ":" in userinfo:
        password = userinfo.partition(":")[2]
        found.add(password)
    if parsed_password:
        found.add(parsed_password)
    # A parser that ends a password at an "@" takes the rest for the host, and quotes it.
    found |= {part for secret in found for part in secret.split("@")}
    forms: set[str] = set()
    for secret in found:
        forms |= {secret, unquote(secret), unquote_plus(secret), quote(secret, safe="")}
        forms.add(quote_plus(secret))
    return tuple(sorted((f for f in forms if f), key=len, reverse=True))


def has_stray_at(url: str) -> bool:
    """Whether ``url`` holds an ``@`` other than the one that ends its user part.

    URL parsers disagree on such a URL (SQLAlchemy ends the password at the first ``@``, and
    ``?password=a@b`` may be read as a user part): the driver would get part of the password as
    its host name, and quote it in its error.
    """
    return url.count("@") > 1 or any("@" in m.group(2) for m in _QUERY_SECRET.finditer(url))


def hide(text: str, secrets: Iterable[str], *, shortest: int = 1) -> str:
    """``text`` with each of ``secrets`` (longest first) at least ``shortest`` long replaced."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= shortest:
            text = text.replace(secret, HIDDEN)
    return text
