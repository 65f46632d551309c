"""What aiohttp's connection handler logs, said through loguru, without the bytes a client sent.

aiohttp answers a request its HTTP parser refuses (a header line over 8190 bytes, a bad request
line, broken chunked framing) before any of our code runs, and logs it with the
standard library as an ERROR with a traceback and the parser's message, which quotes the offending
bytes: an ``Authorization`` header padded past the limit put the caller's API key in the log, and
any client could fill the log with tracebacks. ``ServerLog`` is handed to ``web.AppRunner`` as its
documented ``logger`` argument, which aiohttp's ``RequestHandler`` writes to. A request whose head the parser
refused no longer comes here (``GuardedRequestHandler.handle_error`` answers and logs it, once, as an access
line); a body's broken framing found outside its handler still does.
"""

from __future__ import annotations

import sys
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from loguru import logger


class ServerLog:
    """The ``logger`` of aiohttp's ``RequestHandler`` (it calls only ``debug`` and ``exception``).

    A client's malformed request is one INFO line naming the parser's refusal by its class and
    status, never its message; anything else aiohttp reports as an exception is our bug and keeps
    its traceback at ERROR (no local variables: the sink has ``diagnose`` off).
    """

    def debug(self, msg: str, *args: Any, exc_info: Any = None, **_: Any) -> None:
        _report(msg, args, _exception(exc_info), refused="DEBUG", otherwise="DEBUG", traceback=False)

    def exception(self, msg: str, *args: Any, exc_info: Any = True, **_: Any) -> None:
        _report(msg, args, _exception(exc_info), refused="INFO", otherwise="ERROR", traceback=True)


def _report(msg: str, args: tuple[Any, ...], exc: BaseException | None, *, refused: str, otherwise: str,
            traceback: bool) -> None:
    """One line: a client's refused request at ``refused`` without its bytes, anything else at
    ``otherwise`` (with its traceback when ``traceback``)."""
    fault = _client_fault(exc)
    if fault is not None:
        logger.log(refused, "{}", _refusal(msg, args, fault))
    else:
        logger.opt(exception=exc if traceback else None).log(otherwise, "{}", _text(msg, args))


def _exception(exc_info: Any) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    return sys.exc_info()[1] if exc_info else None


def _client_fault(exc: BaseException | None) -> HttpProcessingError | None:
    """The parser's refusal behind ``exc``, if the client's bytes caused it (a body's refusal comes
    wrapped in a ``RequestPayloadError``, whose message quotes the same bytes)."""
    if isinstance(exc, RequestPayloadError):
        exc = exc.__cause__
    return exc if isinstance(exc, HttpProcessingError) else None


def _text(msg: str, args: tuple[Any, ...]) -> str:
    return msg % args if args else msg


def _refusal(msg: str, args: tuple[Any, ...], exc: HttpProcessingError) -> str:
    """``http refused from 127.0.0.1: 400 LineTooLong``: aiohttp's args are the client's address."""
    where = f" from {args[0]}" if args and "from" in msg else ""
    return f"http refused{where}: {exc.code} {type(exc).__name__} (a malformed request; its bytes are not logged)"
