"""A POST sent once more when the kept-alive connection it went out on was closed before any answer.

A server ends an idle kept-alive connection on its own clock (uvicorn, so vLLM and SGLang, and Node after
5 s; llama.cpp's server after 5 s), while an aiohttp pool keeps one 15 s. A request that went out on such a
connection as the server closed it met a closed connection: a miner lost the race (or a caller who asked it
alone had a 502), a miner's model-server call failed, for nothing either side did. RFC 9112 (9.3.1) allows
sending it again on a new connection, which aiohttp does for idempotent methods only. Against a server with
a 0.5 s keep-alive, 18 of 200 POSTs sent just as it ran out failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
from loguru import logger


async def post_once_more(session: aiohttp.ClientSession, url: Any, *,
                         again: Callable[[], dict[str, Any]] | None = None, **kwargs: Any) -> aiohttp.ClientResponse:
    """``session.post(url, **kwargs)``, sent once more (``kwargs`` updated by ``again()``: a new signature, the
    time left) when the connection closed before any answer. A connection that could not be made is not
    retried (nothing was sent; the caller's failure), nor one that broke after the answer began (its caller
    reads the body outside this call)."""
    try:
        return await session.post(url, **kwargs)
    except aiohttp.ClientConnectorError:
        raise
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
        logger.debug("{} closed the connection before answering ({}): sent again on a new one", url, e)
    if again is not None:
        kwargs |= again()
    return await session.post(url, **kwargs)
