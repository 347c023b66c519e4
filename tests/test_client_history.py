"""Who owns a session's history (issue 13, item 19). A session chosen by a configured
``gateway.http.sessionHeaders`` header follows the client: a chat UI (Open WebUI) resends the
whole conversation every turn and may regenerate or edit it, so what reaches the upstream is
exactly the client's conversation, enriched with the stored tool records that match it; a
divergence is recorded as a branch point, nothing rewritten. ``user`` sessions keep the stored
history (see test_chat_completions)."""
from __future__ import annotations

import json

import pytest_twisted
from twisted.internet import threads

from moltbot_gw.agents.client_history import align
from moltbot_gw.sessions.transcript import current_branch, history_messages

from .chat_helpers import BETA_PROMPT, config, http, no_leftovers  # noqa: F401
from .test_chat_completions import post, upstream_messages
from .test_ws_protocol import open_client

CHAT = {"x-openwebui-chat-id": "chat-42"}
SYS = {"role": "system", "content": BETA_PROMPT}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {}}}}


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def ui_config(upstream):
    return config(upstream, gateway={"http": {
        "endpoints": {"chatCompletions": {"enabled": True}},
        "sessionHeaders": ["x-openwebui-chat-id"]}})


def all_records(state_dir, agent_id="beta"):
    files = sorted((state_dir / "agents" / agent_id / "sessions").glob("*.jsonl"))
    return [json.loads(line) for path in files
            for line in path.read_text().splitlines() if line.strip()]


async def ui_turn(http, gw, messages, **extra):
    response, body = await post(http, gw, {"model": "moltbot:beta", "messages": messages,
                                           **extra}, headers=CHAT)
    assert response.code == 200, body
    return json.loads(body)


# --- the three UI gestures, by what reaches the upstream --------------------------------


@pytest_twisted.ensureDeferred
async def test_header_session_continue_sends_nothing_twice(start_gateway, http, upstream):
    gw = await start_gateway(ui_config(upstream))
    upstream.queue(text="a1").queue(text="a2")
    await ui_turn(http, gw, [user("u1")])
    await ui_turn(http, gw, [user("u1"), assistant("a1"), user("u2")])
    assert upstream_messages(upstream) == [SYS, user("u1"), assistant("a1"), user("u2")]


@pytest_twisted.ensureDeferred
async def test_a_long_header_session_continues_without_a_branch(start_gateway, http, upstream,
                                                                state_dir):
    """History is read from the transcript's tail; for a session the client owns, the tail
    must reach back over the whole conversation it resent, however short the agent's own
    history limit, or every turn would look like an edit."""
    raw = ui_config(upstream)
    raw["agents"]["defaults"] = {"history": {"maxMessages": 2}}
    gw = await start_gateway(raw)
    conversation = []
    for turn in range(12):
        upstream.queue(text=f"a{turn}")
        conversation.append(user(f"u{turn}"))
        await ui_turn(http, gw, conversation)
        conversation.append(assistant(f"a{turn}"))
    assert upstream_messages(upstream) == [SYS, user("u10"), assistant("a10"), user("u11")]
    records = all_records(state_dir)
    assert [r for r in records if r["type"] == "branch"] == []
    assert [r["content"] for r in records if r["type"] == "message"] == [
        m["content"] for m in conversation]


@pytest_twisted.ensureDeferred
async def test_header_session_regenerate_drops_the_old_answer(start_gateway, http, upstream,
                                                              state_dir):
    gw = await start_gateway(ui_config(upstream))
    upstream.queue(text="a1").queue(text="a2").queue(text="a2 again").queue(text="a3")
    await ui_turn(http, gw, [user("u1")])
    await ui_turn(http, gw, [user("u1"), assistant("a1"), user("u2")])
    # Regenerate: the UI sends the same conversation again, without the old a2
    await ui_turn(http, gw, [user("u1"), assistant("a1"), user("u2")])
    assert upstream_messages(upstream) == [SYS, user("u1"), assistant("a1"), user("u2")]
    # the next turn follows the regenerated branch
    await ui_turn(http, gw, [user("u1"), assistant("a1"), user("u2"), assistant("a2 again"),
                             user("u3")])
    assert upstream_messages(upstream) == [SYS, user("u1"), assistant("a1"), user("u2"),
                                           assistant("a2 again"), user("u3")]
    records = all_records(state_dir)
    branches = [r for r in records if r["type"] == "branch"]
    assert [(b["keep"], b["drop"]) for b in branches] == [(2, 2)]
    # nothing was rewritten or lost: the old u2 and a2 are still in the transcript
    texts = [r["content"] for r in records if r["type"] == "message"]
    assert texts == ["u1", "a1", "u2", "a2", "u2", "a2 again", "u3", "a3"]


@pytest_twisted.ensureDeferred
async def test_header_session_edit_of_the_first_message_starts_a_new_branch(
        start_gateway, http, upstream, state_dir):
    gw = await start_gateway(ui_config(upstream))
    upstream.queue(text="a1").queue(text="a2").queue(text="b1").queue(text="b2")
    await ui_turn(http, gw, [user("u1")])
    await ui_turn(http, gw, [user("u1"), assistant("a1"), user("u2")])
    # Edit the first message: the UI sends a conversation of one message
    await ui_turn(http, gw, [user("u1 edited")])
    assert upstream_messages(upstream) == [SYS, user("u1 edited")]
    # a turn after the edit sees only the new branch
    await ui_turn(http, gw, [user("u1 edited"), assistant("b1"), user("v2")])
    assert upstream_messages(upstream) == [SYS, user("u1 edited"), assistant("b1"),
                                           user("v2")]
    assert [r for r in all_records(state_dir) if r["type"] == "branch"][0]["keep"] == 0


@pytest_twisted.ensureDeferred
async def test_header_session_edit_of_an_answer_is_recorded_as_the_clients_version(
        start_gateway, http, upstream, state_dir):
    gw = await start_gateway(ui_config(upstream))
    upstream.queue(text="a1").queue(text="a2").queue(text="a3")
    await ui_turn(http, gw, [user("u1")])
    await ui_turn(http, gw, [user("u1"), assistant("a1 (edited by hand)"), user("u2")])
    assert upstream_messages(upstream) == [SYS, user("u1"), assistant("a1 (edited by hand)"),
                                           user("u2")]
    await ui_turn(http, gw, [user("u1"), assistant("a1 (edited by hand)"), user("u2"),
                             assistant("a2"), user("u3")])
    assert upstream_messages(upstream) == [SYS, user("u1"), assistant("a1 (edited by hand)"),
                                           user("u2"), assistant("a2"), user("u3")]
    assert len([r for r in all_records(state_dir) if r["type"] == "branch"]) == 1


@pytest_twisted.ensureDeferred
async def test_stored_tool_calls_the_ui_never_resends_stay_in_place(start_gateway, http,
                                                                     upstream):
    gw = await start_gateway(ui_config(upstream))
    upstream.queue(text="", tool_calls=(("get_weather", "{}"),))
    upstream.queue(text="Sunny.").queue(text="You are welcome.")
    first = await ui_turn(http, gw, [user("Weather?")], tools=[WEATHER_TOOL])
    call = first["choices"][0]["message"]["tool_calls"][0]
    await ui_turn(http, gw, [user("Weather?"), first["choices"][0]["message"],
                             {"role": "tool", "tool_call_id": call["id"], "content": "21C"}],
                  tools=[WEATHER_TOOL])
    # the UI shows (and resends) only the text of the conversation
    await ui_turn(http, gw, [user("Weather?"), assistant("Sunny."), user("Thanks")])
    sent = upstream_messages(upstream)
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "assistant",
                                         "user"]
    assert sent[2]["tool_calls"][0]["id"] == call["id"]
    assert sent[3] == {"role": "tool", "tool_call_id": call["id"], "content": "21C"}
    assert sent[4:] == [assistant("Sunny."), user("Thanks")]


@pytest_twisted.ensureDeferred
async def test_a_user_session_keeps_the_stored_history_when_the_client_sends_one_turn(
        start_gateway, http, upstream):
    gw = await start_gateway(ui_config(upstream))
    upstream.queue(text="a1").queue(text="a2")
    for text in ("u1", "u2"):
        response, _ = await post(http, gw, {"model": "moltbot:beta", "user": "ann",
                                            "messages": [user(text)]})
        assert response.code == 200
    assert upstream_messages(upstream) == [SYS, user("u1"), assistant("a1"), user("u2")]


@pytest_twisted.ensureDeferred
async def test_ws_chat_history_shows_the_current_branch(start_gateway, http, upstream):
    gw = await start_gateway(ui_config(upstream))
    upstream.queue(text="a1").queue(text="a2").queue(text="b1")
    await ui_turn(http, gw, [user("u1")])
    await ui_turn(http, gw, [user("u1"), assistant("a1"), user("u2")])
    await ui_turn(http, gw, [user("u1"), assistant("a1"), user("u2 edited")])

    def history():
        client = open_client(gw.ws_url)
        try:
            return client.call("chat.history",
                               {"sessionKey": "agent:beta:openai-chat:chat-42"})
        finally:
            client.close()

    reply = await threads.deferToThread(history)
    assert [(m["role"], m["content"]) for m in reply["payload"]["messages"]] == [
        ("user", "u1"), ("assistant", "a1"), ("user", "u2 edited"), ("assistant", "b1")]


@pytest_twisted.ensureDeferred
async def test_responses_on_a_header_session_follow_the_clients_input(start_gateway, http,
                                                                      upstream):
    raw = ui_config(upstream)
    raw["gateway"]["http"]["endpoints"]["responses"] = {"enabled": True}
    gw = await start_gateway(raw)
    upstream.queue(text="a1").queue(text="a2").queue(text="b1")
    url = gw.url + "/v1/responses"
    headers = {"Content-Type": "application/json", **gw.auth_headers, **CHAT}

    async def respond(body):
        response = await http.post(url, json.dumps(body).encode(), headers=headers)
        reply = json.loads(await response.content())
        assert response.code == 200, reply
        return reply

    first = await respond({"model": "moltbot:beta", "input": "u1"})
    await respond({"model": "moltbot:beta", "input": [
        user("u1"), {"role": "assistant", "content": "a1"}, user("u2")]})
    assert upstream_messages(upstream) == [SYS, user("u1"), assistant("a1"), user("u2")]
    # an edit of the first message, sent as the whole conversation
    await respond({"model": "moltbot:beta", "input": "u1 edited"})
    assert upstream_messages(upstream) == [SYS, user("u1 edited")]
    # continuing by previous_response_id on that header session keeps the stored history
    await respond({"model": "moltbot:beta", "input": "u2", "previous_response_id": first["id"]})
    assert upstream_messages(upstream) == [SYS, user("u1 edited"), assistant("b1"), user("u2")]


# --- history building and alignment, in memory --------------------------------------------


def message(role, text, **extra):
    return {"type": "message", "role": role, "content": text, **extra}


def test_branch_records_leave_the_dropped_messages_out_of_the_history():
    records = [message("user", "u1"), message("assistant", "a1"), message("user", "u2"),
               message("assistant", "", status="aborted"),
               {"type": "branch", "drop": 2, "keep": 1},
               message("assistant", "a1 again"), message("user", "u3")]
    assert history_messages(records) == [user("u1"), assistant("a1 again"), user("u3")]
    # the empty aborted reply went with its question; a view for people shows the rest
    assert [r["content"] for r in current_branch(records, every_message=True)] == [
        "u1", "a1 again", "u3"]


def test_a_branch_in_a_tail_window_drops_only_what_the_window_holds():
    tail = [message("assistant", "a7"), message("user", "u8"), message("assistant", "a8"),
            {"type": "branch", "drop": 2, "keep": 15}, message("user", "u8 edited")]
    assert history_messages(tail) == [assistant("a7"), user("u8 edited")]
    reaching_before = [message("user", "u9"), {"type": "branch", "drop": 5, "keep": 0},
                       message("user", "new start")]
    assert history_messages(reaching_before) == [user("new start")]


def test_a_dropped_tool_call_takes_its_results_with_it():
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    records = [message("user", "u1"), message("assistant", "", tool_calls=[call]),
               message("tool", "r", tool_call_id="c1"), message("assistant", "done"),
               {"type": "branch", "drop": 3, "keep": 1}, message("user", "u1b")]
    assert history_messages(records) == [user("u1"), user("u1b")]


def test_alignment_keeps_matches_and_skips_tool_records_the_client_never_sent():
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    stored = [user("u1"), {"role": "assistant", "content": None, "tool_calls": [call]},
              {"role": "tool", "tool_call_id": "c1", "content": "r"}, assistant("a1"),
              user("u2"), assistant("a2")]
    same = align(stored, [user("u1"), assistant("a1"), user("u2"), assistant("a2")])
    assert (same.keep, same.drop, same.rest) == (6, 0, ())
    regenerate = align(stored, [user("u1"), assistant("a1")])
    assert (regenerate.keep, regenerate.drop, regenerate.rest) == (4, 2, ())
    edited = align(stored, [user("u1"), assistant("a1"), user("u2 edited"),
                            assistant("x")])
    assert (edited.keep, edited.drop) == (4, 2)
    assert edited.rest == (user("u2 edited"), assistant("x"))
    first = align(stored, [])
    assert (first.keep, first.drop, first.rest) == (0, 6, ())
