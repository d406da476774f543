"""Request parsing stricter than FastAPI's: JSON only, no duplicate keys, no NaN, size-capped.

Bodies are UTF-8 without a byte order mark (RFC 8259 section 8.1: JSON exchanged between
systems is UTF-8 and carries no BOM). A BOM is refused as malformed JSON rather than skipped, as
other encodings are (they are never guessed); a ``charset`` other than UTF-8 is a ``415``.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vpsd.api.errors import error_response
from vpsd.schemas import FieldError
from vpsd.validation import OversizedInteger

NOT_JSON = FieldError(field="header.content-type", message="must be application/json")
NOT_UTF8 = FieldError(field="header.content-type", message="the only charset accepted is utf-8")
MAX_INTEGER_DIGITS = 4300
"""Python's default limit on converting digits to an int (``sys.set_int_max_str_digits``);
every integer the API takes has at most 19."""


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # FastAPI turns a JSONDecodeError into a 400 "malformed JSON" answer.
            raise json.JSONDecodeError(f"duplicate key {key!r}", "", 0)
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not valid JSON", "", 0)


def _parse_int(literal: str) -> int | OversizedInteger:
    digits = len(literal.lstrip("-"))
    # Past the limit int() raises a ValueError, which FastAPI would answer with a bare
    # "There was an error parsing the body"; the marker lets validation name the field.
    return OversizedInteger(digits) if digits > MAX_INTEGER_DIGITS else int(literal)


def parse_json(body: bytes) -> Any:
    """Parse a request body as strict JSON: UTF-8 without a BOM, duplicate keys and
    NaN/Infinity are errors; an integer of over 4300 digits fails the field it is in.

    Every failure is a ``json.JSONDecodeError``, which FastAPI answers as malformed JSON
    (a 400 naming ``body``).
    """
    if body.startswith(codecs.BOM_UTF8):
        raise json.JSONDecodeError("the body starts with a byte order mark (send none)", "", 0)
    try:
        # Decoded here: json.loads would guess UTF-16 or UTF-32 from the bytes, and skip a BOM.
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise json.JSONDecodeError("the body is not UTF-8 text", "", 0) from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
            parse_int=_parse_int,
        )
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None
    except ValueError as error:  # anything else json.loads refuses: still malformed JSON
        raise json.JSONDecodeError(str(error), "", 0) from None
    if isinstance(value, OversizedInteger):  # the whole body: no field to name
        raise json.JSONDecodeError(f"integer too large ({value.digits} digits)", "", 0)
    return value


def charset_of(content_type: str) -> str | None:
    """The ``charset`` parameter of a ``Content-Type`` value, lower-cased; None without one."""
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


class StrictJSONRequest(Request):
    """A request whose ``json()`` is ``parse_json``."""

    async def json(self) -> Any:
        """The body as strict JSON."""
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """Routes that parse bodies with ``StrictJSONRequest`` and refuse non-JSON bodies (415)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler  # nothing to parse: no wrapper on the hot read paths

        async def strict_handler(request: Request) -> Response:
            strict = StrictJSONRequest(request.scope, request.receive)
            if self.body_field is not None:
                try:
                    body = await strict.body()  # cached on ``strict`` for the handler
                except BodyTooLarge as too_large:
                    return body_too_large(too_large.max_bytes)
                content_type = strict.headers.get("content-type", "")
                media_type = content_type.split(";")[0].strip().lower()
                if body and not (media_type == "application/json" or media_type.endswith("+json")):
                    return error_response(
                        415,
                        "the request body must be JSON (Content-Type: application/json)",
                        [NOT_JSON],
                    )
                if body and charset_of(content_type) not in (None, "utf-8"):
                    return error_response(
                        415, "the request body must be UTF-8 JSON (charset=utf-8)", [NOT_UTF8]
                    )
            return await handler(strict)

        return strict_handler


class BodyTooLarge(Exception):
    """The request body passed the configured limit of ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"request body larger than {max_bytes} bytes")
        self.max_bytes = max_bytes


def body_too_large(max_bytes: int) -> Response:
    """The ``413`` answer, the same whether the size was declared or counted while streaming."""
    message = f"request body larger than {max_bytes} bytes"
    return error_response(413, message, [FieldError(field="body", message=message)])


class BodySizeLimit:
    """ASGI middleware answering ``413`` to bodies over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and not declared.isdigit():
            invalid = FieldError(field="header.content-length", message="must be decimal digits")
            await error_response(400, "invalid Content-Length header", [invalid])(
                scope, receive, send
            )
            return
        if declared is not None and int(declared) > self.max_bytes:
            await body_too_large(self.max_bytes)(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await body_too_large(self.max_bytes)(scope, receive, send)
