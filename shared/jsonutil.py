"""JSON helpers shared by every process (one place to swap the codec)."""

from __future__ import annotations

import json
from typing import Any

from shared.errors import ApiError


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def dumpb(obj: Any) -> bytes:
    return dumps(obj).encode()


def loads_body(raw: bytes) -> Any:
    """Parse a request body, turning every decoding failure into a 400."""
    if not raw:
        raise ApiError(400, "Request body is empty; expected a JSON object.", code="invalid_json")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError(400, "Request body is not valid UTF-8.", code="invalid_json") from None
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"Request body is not valid JSON: {e}", code="invalid_json") from None
