"""A URL setting as a line shows it: its credentials masked, and the SQLite URL a near miss was meant to be.
Apart from ``shared.settings`` (which uses both) so that ``sn1 backup`` and ``sn1 vacuum``, which take a
``STORE_URL``, say what is wrong with one without loading pydantic (~0.15 s of CPU)."""

from __future__ import annotations

import re

# What a URL carries before its host (``user:password@``), to its last '@': a password may hold one (redis-py reads
# ``redis://:p@ss@host`` as the password ``p@ss``), and masking to the first left the rest of it in the line.
_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)?\S*@", re.IGNORECASE)
# A credential given as a query parameter (``redis://host/0?password=...``, which redis-py takes as the password).
_SECRET_PARAM = re.compile(r"([?&][a-z_.-]*(?:pass|pwd|token|secret|key|auth)[a-z_.-]*=)[^&#\s]*", re.IGNORECASE)


def mask_credentials(text: str) -> str:
    """``redis://:pw@host/0`` -> ``redis://***@host/0``, ``redis://host/0?password=pw`` -> ``...?password=***``:
    what a URL setting carries as a password (Redis, an upstream's token), and error lines end up in logs. An '@'
    in the URL's path or query hides what comes before it too: wider than needed, never a password's part."""
    masked = _USERINFO.sub(lambda m: (m.group(1) or "") + "***@", text)
    return _SECRET_PARAM.sub(r"\1***", masked)


def sqlite_url_meant(v: str) -> str:
    """The SQLite ``STORE_URL`` a value that is none was likely meant to be, as ``: write ...`` (or ``""``): a URL
    with two slashes (``sqlite://state/api.db``, SQLAlchemy's habit cut short) or a bare path (``./state/api.db``)."""
    if v.startswith("sqlite:"):
        rest = v[len("sqlite:"):].lstrip("/")
        return f": write sqlite:///{rest} (from the working directory) or sqlite:////{rest} (from /)"
    if v and "://" not in v and (v.endswith(".db") or v.startswith(("/", "./", "../", "~"))):
        return f": write sqlite:///{v}" + (" (four slashes for a path from /)" if v.startswith("/") else "")
    return ""
