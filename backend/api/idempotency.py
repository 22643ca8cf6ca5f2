"""Answering a repeated request with its first answer, so that a retry never acts twice.

A client whose connection drops before the answer cannot know whether its request was
carried out. It sends each changing request with an `Idempotency-Key` header and, after
a drop, sends it again with the same key: if the first one ran (or is still running),
the repeat waits for it and gets its answer, byte for byte, instead of creating, booting
or deleting a second time. Keys are remembered for the last `REMEMBERED` requests; a key
sent again with a different request is refused, as it can only be a client's mistake.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.api.errors import error_response

HEADER = b"idempotency-key"
REMEMBERED = 1024
MAX_KEY_LENGTH = 200
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class _Answer:
    request: tuple[str, str, bytes, str]  # method, path, query, body digest
    #: what was sent, or None when the first attempt failed without a whole answer
    messages: asyncio.Future[list[Message] | None]


class Idempotency:
    def __init__(self, app: ASGIApp, remembered: int = REMEMBERED) -> None:
        self.app = app
        self.remembered = remembered
        self.answers: OrderedDict[str, _Answer] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = _key(scope)
        if key is None:
            await self.app(scope, receive, send)
            return
        if len(key) > MAX_KEY_LENGTH:
            await error_response("invalid_request", f"Idempotency-Key: longer than "
                                 f"{MAX_KEY_LENGTH} characters")(scope, receive, send)
            return
        body = await _read_body(receive)
        request = (scope["method"], scope["path"], scope.get("query_string", b""),
                   hashlib.sha256(body).hexdigest())
        known = self.answers.get(key)
        if known is not None:
            await self._repeat(known, request, scope, _replaying(body, receive), send)
            return
        answer = _Answer(request, asyncio.get_running_loop().create_future())
        self.answers[key] = answer
        self._forget_oldest()
        await self._first(key, answer, scope, _replaying(body, receive), send)

    async def _repeat(self, known: _Answer, request: tuple[str, str, bytes, str],
                      scope: Scope, receive: Receive, send: Send) -> None:
        if known.request != request:
            await error_response("invalid_request", "Idempotency-Key: already used for "
                                 "a different request")(scope, receive, send)
            return
        messages = await asyncio.shield(known.messages)
        if messages is None:  # the first attempt failed: this one runs afresh
            await self.app(scope, receive, send)
            return
        for message in messages:
            await send(message)

    async def _first(self, key: str, answer: _Answer, scope: Scope, receive: Receive,
                     send: Send) -> None:
        sent: list[Message] = []

        async def keep(message: Message) -> None:
            sent.append(message)
            # the client may be gone (that is why it will ask again): keep the answer
            with contextlib.suppress(OSError):
                await send(message)

        try:
            await self.app(scope, receive, keep)
        except BaseException:
            # no whole answer to repeat: a retry runs the request afresh
            if self.answers.get(key) is answer:
                del self.answers[key]
            answer.messages.set_result(None)
            raise
        answer.messages.set_result(sent)

    def _forget_oldest(self) -> None:
        for key in list(self.answers):
            if len(self.answers) <= self.remembered:
                return
            if self.answers[key].messages.done():
                del self.answers[key]


def _key(scope: Scope) -> str | None:
    if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
        return None
    for name, value in scope.get("headers", ()):
        if name == HEADER:
            return str(value.decode("latin-1"))
    return None


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """`receive` for the app after the body was read here: the body once, then the
    client's own messages (a disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
