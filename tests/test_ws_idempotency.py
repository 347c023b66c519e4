"""Issue 13 item 9: WebSocket idempotency keys belong to one client and one method. Another
client reusing a key gets its own run, never the first client's (another session's private
text); the same client reusing a key with other params gets ``IDEMPOTENCY_CONFLICT``. Also
item 6's WebSocket part: an over-long ``message`` is refused naming its limit."""
from __future__ import annotations

import pytest_twisted

from .test_ws_protocol import Client, in_thread, open_client
from .conftest import TOKEN


def client_named(url: str, client_id: str) -> Client:
    client = Client(url)
    reply = client.connect(TOKEN, client={"id": client_id, "version": "1"})
    assert reply["ok"], reply
    return client


@pytest_twisted.ensureDeferred
async def test_another_client_reusing_a_key_gets_its_own_run_not_the_first_ones(
        start_gateway):
    gw = await start_gateway()

    def scenario():
        alice = client_named(gw.ws_url, "alice-app")
        request_id, _ = alice.request("agent", {"message": "alice private secret",
                                                "sessionKey": "alice", "idempotencyKey": "k1"})
        a_final = alice.response(request_id)
        bob = client_named(gw.ws_url, "bob-app")
        request_id, b_accepted = bob.request("agent", {"message": "bob hello",
                                                       "sessionKey": "bob",
                                                       "idempotencyKey": "k1"})
        b_final = bob.response(request_id)
        # the same key on another method is another key too
        _, b_send = bob.request("chat.send", {"message": "bob hello", "sessionKey": "bob",
                                              "idempotencyKey": "k1"})
        alice.close()
        bob.close()
        return a_final, b_accepted, b_final, b_send

    a_final, b_accepted, b_final, b_send = await in_thread(scenario)
    assert a_final["ok"] is True and "alice private secret" in a_final["payload"]["text"]
    assert b_accepted["ok"] is True
    assert "deduplicated" not in b_accepted["payload"]
    assert b_accepted["payload"]["runId"] != a_final["payload"]["runId"]
    assert b_final["payload"]["text"] == "bob hello"
    assert "alice" not in b_final["payload"]["text"]
    assert b_send["ok"] is True and "deduplicated" not in b_send["payload"]


@pytest_twisted.ensureDeferred
async def test_a_key_reused_with_other_params_is_an_idempotency_conflict(start_gateway):
    gw = await start_gateway()
    params = {"message": "first", "sessionKey": "idem", "idempotencyKey": "k2"}

    def scenario():
        client = open_client(gw.ws_url)
        request_id, accepted = client.request("agent", params)
        client.response(request_id)
        _, conflict = client.request("agent", {**params, "message": "something else"})
        _, other_session = client.request("agent", {**params, "sessionKey": "elsewhere"})
        request_id, same = client.request("agent", params)    # an honest retry still works
        client.response(request_id)
        client.close()
        return accepted, conflict, other_session, same

    accepted, conflict, other_session, same = await in_thread(scenario)
    assert conflict["ok"] is False
    assert conflict["error"]["code"] == "IDEMPOTENCY_CONFLICT"
    assert other_session["error"]["code"] == "IDEMPOTENCY_CONFLICT"
    assert same["payload"]["deduplicated"] is True
    assert same["payload"]["runId"] == accepted["payload"]["runId"]


@pytest_twisted.ensureDeferred
async def test_a_message_over_ws_max_message_chars_is_refused_naming_the_limit(start_gateway):
    gw = await start_gateway({"gateway": {"limits": {"wsMaxMessageChars": 10}}})

    def scenario():
        client = open_client(gw.ws_url)
        too_long = client.call("chat.send", {"message": "x" * 11})
        request_id, fits = client.request("agent", {"message": "x" * 10})
        client.response(request_id)
        client.close()
        return too_long, fits

    too_long, fits = await in_thread(scenario)
    assert too_long["ok"] is False and too_long["error"]["code"] == "INVALID_REQUEST"
    assert "gateway.limits.wsMaxMessageChars" in too_long["error"]["message"]
    assert fits["ok"] is True
