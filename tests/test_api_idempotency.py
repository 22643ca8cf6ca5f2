"""A changing request sent again with the same `Idempotency-Key` gets the first answer
and is not carried out twice (what makes the CLI's retry after a dropped connection safe)."""

from __future__ import annotations

import asyncio
import json

from starlette.types import Message

from backend.api.idempotency import Idempotency
from backend.state.engine import Engine
from tests.api_helpers import Api


async def test_a_repeat_gets_the_first_answer_and_changes_nothing(api: Api) -> None:
    c = api.client
    key = {"Idempotency-Key": "create-vm-1"}
    body = {"name": "vm"}
    first, second = await asyncio.gather(
        c.post("/v1/machines", params={"start": "true"}, json=body, headers=key),
        c.post("/v1/machines", params={"start": "true"}, json=body, headers=key))
    assert first.status_code == second.status_code == 201, (first.text, second.text)
    assert first.content == second.content
    later = await c.post("/v1/machines", params={"start": "true"}, json=body, headers=key)
    assert (later.status_code, later.content) == (201, first.content)
    assert api.driver.starts == {"vm": 1}
    fresh = await c.post("/v1/machines", params={"start": "true"}, json=body,
                         headers={"Idempotency-Key": "create-vm-2"})
    assert fresh.status_code == 409 and fresh.json()["code"] == "exists"
    misused = await c.post("/v1/machines", json={"name": "other"}, headers=key)
    assert misused.status_code == 422 and "different request" in misused.json()["message"]
    gone = {"Idempotency-Key": "rm-vm"}
    deleted = [await c.delete("/v1/machines/vm", params={"force": "true"}, headers=gone)
               for _ in range(2)]
    assert [d.status_code for d in deleted] == [204, 204]
    assert (await c.delete("/v1/machines/vm")).status_code == 404


async def test_a_dropped_connection_then_a_retry_acts_once(api: Api, engine: Engine) -> None:
    payload = json.dumps({"name": "vm"}).encode()
    request = (b"POST /v1/machines?start=true HTTP/1.1\r\nhost: boxui\r\n"
               b"content-type: application/json\r\nidempotency-key: k\r\n"
               b"content-length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    _, writer = await asyncio.open_unix_connection(str(engine.dirs.api_socket))
    writer.write(request)
    await writer.drain()
    writer.close()  # gone before any answer
    retry = await api.client.post("/v1/machines", params={"start": "true"}, content=payload,
                                  headers={"Idempotency-Key": "k",
                                           "content-type": "application/json"})
    assert retry.status_code == 201, retry.text
    assert retry.json()["state"] == "ready" and api.driver.starts == {"vm": 1}


async def test_gets_carry_no_key_and_the_memory_is_bounded() -> None:
    answered = 0

    async def app(scope: object, receive: object, send: object) -> None:
        nonlocal answered
        answered += 1
        assert callable(send)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(answered).encode()})

    idem = Idempotency(app, remembered=3)

    async def call(method: str, key: str) -> bytes:
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {"type": "http", "method": method, "path": "/x", "query_string": b"",
                 "headers": [(b"idempotency-key", key.encode())]}
        await idem(scope, receive, send)
        body = sent[-1]["body"]
        assert isinstance(body, bytes)
        return body

    assert await call("GET", "a") != await call("GET", "a")  # never replayed
    first = await call("POST", "a")
    assert await call("POST", "a") == first
    for key in "bcd":
        await call("POST", key)
    assert len(idem.answers) == 3 and "a" not in idem.answers
    assert await call("POST", "a") != first  # forgotten: carried out afresh
