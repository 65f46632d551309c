"""One key per web page: the form under which the API merges results and the validator finds pages."""

from __future__ import annotations

from yarl import URL


def normalise_url(raw: str) -> str | None:
    """Scheme and host lower-cased, default port, fragment and trailing slash removed; None if not http(s).

    The path stays percent-encoded as yarl canonicalises it (``%7e`` -> ``~``, ``%3f`` -> ``%3F``):
    decoded, ``/a%3Fb`` (a page named "a?b") and ``/a?b`` (page ``a``, query ``b``) became one key,
    and a distinct result was dropped as a duplicate.
    """
    try:
        url = URL(raw.strip())
        host = url.host  # decoded lazily by yarl: a bad IDNA label ("xn--a.com") raises only here
    except (ValueError, TypeError):  # UnicodeError is a ValueError: a miner's bad URL, dropped (it was a 500)
        return None
    if url.scheme.lower() not in ("http", "https") or not host:
        return None
    path = url.raw_path.rstrip("/") or "/"
    port = "" if url.is_default_port() or url.port is None else f":{url.port}"
    query = f"?{url.query_string}" if url.query_string else ""
    return f"{url.scheme.lower()}://{host.lower()}{port}{path}{query}"


def url_key(url: str) -> str:
    """``normalise_url``, or the text itself for what is not an http(s) URL (still a key to match on)."""
    return normalise_url(url) or url
