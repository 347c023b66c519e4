"""Open WebUI's background task prompts against its file-attached (RAG) turns (issue 13,
item 20): both start with ``### Task:``; only the tasks (title, tags, follow-ups, queries,
autocomplete) quote the chat in ``<chat_history>``, while a RAG turn carries ``<context>`` and
the user's query and is a real turn of the chat. Built from Open WebUI's own templates
(tests/data/openwebui_prompts.py names the source)."""
from __future__ import annotations

import json

import pytest
import pytest_twisted

from moltbot_gw.openai.chat_request import is_task_prompt, parse_chat_request

from .chat_helpers import config, http, no_leftovers  # noqa: F401
from .data import openwebui_prompts as owui
from .test_chat_completions import post, upstream_messages
from .test_client_history import CHAT, all_records, ui_config

CHAT_SO_FAR = [{"role": "user", "content": "How do tides work?"},
               {"role": "assistant", "content": "The moon's gravity pulls the oceans."}]


def chat_request(text: str, history=()):
    body = {"model": "moltbot", "messages": [*history, {"role": "user", "content": text}]}
    return parse_chat_request(json.dumps(body).encode())


def rag_turn(query: str, context: str) -> str:
    """The user's message as Open WebUI sends it with a file attached: the filled RAG
    template put in front of what the user typed."""
    return owui.fill(owui.RAG, context=context, query=query) + "\n" + query


@pytest.mark.parametrize("name", sorted(owui.TASK_TEMPLATES))
def test_open_webui_task_prompts_are_tasks(name):
    prompt = owui.fill(owui.TASK_TEMPLATES[name], CHAT_SO_FAR, query="the moon")
    assert is_task_prompt(chat_request(prompt))


@pytest.mark.parametrize("context", [
    '<source id="1" name="tides.pdf">Tides rise twice a day.</source>',
    # a retrieved document that itself quotes a chat transcript is still a document
    "<source>notes\n<chat_history>\nUSER: hi\n</chat_history></source>",
])
def test_a_file_attached_turn_is_not_a_task(context):
    assert not is_task_prompt(chat_request(rag_turn("When is high tide?", context),
                                           CHAT_SO_FAR))


def test_a_task_about_a_chat_that_mentions_context_tags_is_still_a_task():
    history = [{"role": "user", "content": "What does <context> mean in a prompt?"}]
    assert is_task_prompt(chat_request(owui.fill(owui.TITLE, history)))


@pytest.mark.parametrize("text", [
    "### Task:\nWrite me a haiku about tides.",      # a user's own heading, no chat quoted
    "Summarise this:\n<chat_history>\nUSER: hi\n</chat_history>",   # no task heading
    owui.fill(owui.EMOJI, query="I am so happy"),   # no structure to know it by
])
def test_other_messages_are_turns(text):
    assert not is_task_prompt(chat_request(text))


@pytest_twisted.ensureDeferred
async def test_a_file_attached_turn_is_stored_and_a_title_task_is_not(
        start_gateway, http, upstream, state_dir):
    gw = await start_gateway(ui_config(upstream))
    upstream.queue(text="The moon's gravity pulls the oceans.")
    upstream.queue(text="Twice a day.").queue(text='{"title": "Tides"}')
    first = [CHAT_SO_FAR[0]]
    response, _ = await post(http, gw, {"model": "moltbot:beta", "messages": first},
                             headers=CHAT)
    assert response.code == 200
    with_file = rag_turn("When is high tide?", "<source>Tides rise twice a day.</source>")
    response, _ = await post(http, gw, {"model": "moltbot:beta", "messages": [
        *CHAT_SO_FAR, {"role": "user", "content": with_file}]}, headers=CHAT)
    assert response.code == 200
    assert upstream_messages(upstream)[1:] == [*CHAT_SO_FAR,
                                               {"role": "user", "content": with_file}]
    stored = [(r["role"], r["content"]) for r in all_records(state_dir)
              if r["type"] == "message"]
    assert stored[-2:] == [("user", with_file), ("assistant", "Twice a day.")]

    before = {p.name: p.read_bytes() for p in
              (state_dir / "agents" / "beta" / "sessions").glob("*.jsonl")}
    title = owui.fill(owui.TITLE, CHAT_SO_FAR)
    response, _ = await post(http, gw, {"model": "moltbot:beta", "messages": [
        {"role": "user", "content": title}]}, headers=CHAT)
    assert response.code == 200
    assert upstream_messages(upstream)[1:] == [{"role": "user", "content": title}]
    after = {p.name: p.read_bytes() for p in
             (state_dir / "agents" / "beta" / "sessions").glob("*.jsonl")}
    assert after == before
