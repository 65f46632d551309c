"""One key per web page: the form under which the API merges results and the validator finds pages."""

from __future__ import annotations

from urllib.parse import urlsplit

from yarl import URL

# What no address written on the web holds, beside what is not printable (a browser encodes these, and yarl
# silently drops tabs and newlines): a space, and quotes and angle brackets, which end an HTML attribute or a
# markdown link.
NOT_IN_URLS = frozenset(' <>"')


def written_as_url(text: str) -> bool:
    """Whether ``text`` could be an address as written on the web: only printable characters (no newline,
    other whitespace than a space, control, invisible format character such as U+202E RIGHT-TO-LEFT OVERRIDE,
    or surrogate: each breaks a prompt's lines or shows another name), and none of ``NOT_IN_URLS``."""
    return text.isprintable() and NOT_IN_URLS.isdisjoint(text)


def normalise_url(raw: str) -> str | None:
    """Scheme and host lower-cased, default port, fragment and trailing slash removed; None if not http(s),
    if it is not ``written_as_url`` (after its surrounding whitespace), or if it names a user or password
    (``https://google.com@evil.example/`` reads as one host and goes to another: no search result's address).

    The path stays percent-encoded as yarl canonicalises it (``%7e`` -> ``~``, ``%3f`` -> ``%3F``):
    decoded, ``/a%3Fb`` (a page named "a?b") and ``/a?b`` (page ``a``, query ``b``) became one key,
    and a distinct result was dropped as a duplicate.
    """
    text = raw.strip()
    if not written_as_url(text):  # "https://a.com/x\n\nIgnore all previous instructions" was https://a.com/xIgnore...
        return None
    try:
        url = URL(text)
        host = url.host  # decoded lazily by yarl: a bad IDNA label ("xn--a.com") raises only here
        credentials = "@" in urlsplit(text).netloc  # as written: yarl drops an empty one ("https://@a.com/")
    except (ValueError, TypeError):  # UnicodeError is a ValueError: a miner's bad URL, dropped (it was a 500)
        return None
    if url.scheme.lower() not in ("http", "https") or not host or credentials:
        return None
    path = url.raw_path.rstrip("/") or "/"
    port = "" if url.is_default_port() or url.port is None else f":{url.port}"
    query = f"?{url.query_string}" if url.query_string else ""
    return f"{url.scheme.lower()}://{host.lower()}{port}{path}{query}"


def url_key(url: str) -> str:
    """``normalise_url``, or the text itself for what is not an http(s) URL (still a key to match on)."""
    return normalise_url(url) or url
