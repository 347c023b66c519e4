"""The server-tool loop of a run (agents/tool_loop.py): tools defined here, a real runner on
the fake upstream or builtin/echo, and real clients (treq, websocket) through a gateway."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor, threads
from zope.interface import implementer

from moltbot_gw.agents.registry import AgentRegistry
from moltbot_gw.agents.run import InvalidRunRequest, RunCancelled, RunRequest, RunTimedOut
from moltbot_gw.agents.runner import AgentRunner
from moltbot_gw.agents.tool_loop import ToolLoopLimitReached
from moltbot_gw.config import parse_config
from moltbot_gw.providers.registry import ProviderRegistry
from moltbot_gw.sessions.store import SessionStore
from moltbot_gw.tools.base import AgentTools, IServerTool, ToolError

from .conftest import CHAT_ENABLED, TOKEN
from .support.waiting import until
from .test_runner import transcript_records, upstream_config, user


@implementer(IServerTool)
class Add:
    name = "add"
    group = "group:test"
    description = "adds a and b"
    parameters = {"type": "object", "properties": {"a": {"type": "number"},
                                                     "b": {"type": "number"}},
                  "required": ["a", "b"]}

    def call(self, arguments, context):
        return defer.succeed(str(arguments["a"] + arguments["b"]))


@implementer(IServerTool)
class Gate:
    """Waits until the test opens it; records how many run at once and cancellations."""

    name = "gate"
    group = "group:test"
    description = "waits"
    parameters = {"type": "object", "properties": {"n": {"type": "integer"}}}

    def __init__(self):
        self.waiting: dict[int, defer.Deferred] = {}
        self.running = self.most_running = 0
        self.cancelled: list[int] = []

    def call(self, arguments, context):
        n = arguments.get("n", 0)

        def cancel(_d):
            self.cancelled.append(n)

        d: defer.Deferred = defer.Deferred(cancel)
        self.waiting[n] = d
        self.running += 1
        self.most_running = max(self.most_running, self.running)

        def done(result):
            self.running -= 1
            return result

        return d.addBoth(done)

    def open(self, n):
        self.waiting[n].callback(f"gate {n}")


@implementer(IServerTool)
class Refuse:
    name = "refuse"
    group = "group:test"
    description = "always fails as tools fail"
    parameters = {"type": "object"}

    def call(self, arguments, context):
        raise ToolError("refused: no such thing")


@implementer(IServerTool)
class Broken:
    name = "broken"
    group = "group:test"
    description = "a bug"
    parameters = {"type": "object"}

    def call(self, arguments, context):
        raise ValueError("internal detail sk-secret")


@implementer(IServerTool)
class Big:
    name = "big"
    group = "group:test"
    description = "a long result"
    parameters = {"type": "object"}

    def call(self, arguments, context):
        return defer.succeed("x" * 250)


def tools_of(*tools):
    box = AgentTools(tools={t.name: t for t in tools})
    return lambda agent: box


@pytest_twisted.async_yield_fixture
async def make_runner(state_dir):
    made = []

    def make(raw, *tools):
        config = parse_config(raw, env={}, state_dir=state_dir)
        providers = ProviderRegistry(config.models, reactor)
        made.append((providers, SessionStore(state_dir, reactor)))
        return AgentRunner(AgentRegistry(config), providers, made[-1][1], reactor,
                           tools_for=tools_of(*tools))

    yield make
    for providers, store in made:
        await providers.close()
        await store.flush()


def with_limits(raw, **limits):
    raw["agents"]["defaults"] = {"tools": limits}
    return raw


def tool_messages(body):
    return [m for m in body["messages"] if m["role"] == "tool"]


def collect(run):
    events = []
    run.subscribe(events.append)
    return events


@pytest_twisted.ensureDeferred
async def test_loops_through_a_server_tool_to_the_final_answer(make_runner, upstream):
    runner = make_runner(upstream_config(upstream), Add())
    upstream.queue(text="", tool_calls=(("add", '{"a": 1, "b": 2}'),), usage=(10, 2))
    upstream.queue(text="The sum is 3.", usage=(20, 3))
    run = runner.run(RunRequest(input=user("add 1 and 2")))
    events = collect(run)
    result = await run.wait()
    assert result.text == "The sum is 3." and result.finish_reason == "stop"
    assert result.tool_calls == ()
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (30, 5)
    first, second = upstream.requests[0].body, upstream.requests[1].body
    assert [t["function"]["name"] for t in first["tools"]] == ["add"]
    [call_message] = [m for m in second["messages"] if m.get("tool_calls")]
    [call] = call_message["tool_calls"]
    assert call["function"]["name"] == "add"
    assert tool_messages(second) == [{"role": "tool", "tool_call_id": call["id"],
                                      "content": "3"}]
    tool_events = [e.data for e in events if e.stream == "tool"]
    assert tool_events[0] == {"phase": "start", "callId": call["id"], "name": "add",
                              "arguments": call["function"]["arguments"]}
    assert tool_events[1]["phase"] == "end" and tool_events[1]["ok"] is True
    assert tool_events[1]["preview"] == "3" and tool_events[1]["durationMs"] >= 0
    assert len(tool_events) == 2      # no client tool-call deltas for a server tool


@pytest_twisted.ensureDeferred
async def test_the_transcript_holds_the_loop_and_the_next_turn_replays_it(
        make_runner, upstream, state_dir):
    runner = make_runner(upstream_config(upstream), Add())
    upstream.queue(text="Let me add.", tool_calls=(("add", '{"a": 2, "b": 2}'),))
    upstream.queue(text="Four.")
    await runner.run(RunRequest(input=user("2+2?"), session_key="s")).wait()
    records = transcript_records(state_dir)
    assert [r["role"] for r in records] == ["user", "assistant", "tool", "assistant"]
    assert records[1]["content"] == "Let me add." and records[1]["tool_calls"][0][
        "function"]["name"] == "add"
    assert records[2]["tool_call_id"] == records[1]["tool_calls"][0]["id"]
    assert records[2]["content"] == "4" and records[3]["content"] == "Four."

    upstream.queue(text="ok")
    await runner.run(RunRequest(input=user("thanks"), session_key="s")).wait()
    replayed = upstream.requests[-1].body["messages"]
    roles = [m["role"] for m in replayed if m["role"] != "system"]
    assert roles == ["user", "assistant", "tool", "assistant", "user"]
    assert tool_messages(upstream.requests[-1].body)[0]["content"] == "4"


@pytest_twisted.ensureDeferred
async def test_parallel_calls_are_bounded_and_results_come_back_in_call_order(
        make_runner, upstream):
    gate = Gate()
    runner = make_runner(with_limits(upstream_config(upstream), maxParallel=2), gate)
    upstream.queue(text="", tool_calls=tuple(("gate", json.dumps({"n": n})) for n in range(3)))
    upstream.queue(text="done")
    run = runner.run(RunRequest(input=user("go")))
    await until(lambda: len(gate.waiting) == 2)
    assert gate.running == 2          # the third waits for a free place
    gate.open(1)
    await until(lambda: len(gate.waiting) == 3)
    gate.open(2)
    gate.open(0)
    await run.wait()
    assert gate.most_running == 2
    assert [m["content"] for m in tool_messages(upstream.requests[1].body)] == [
        "gate 0", "gate 1", "gate 2"]


@pytest_twisted.ensureDeferred
async def test_a_model_that_calls_tools_forever_stops_at_max_iterations(make_runner, upstream):
    runner = make_runner(with_limits(upstream_config(upstream), maxIterations=2), Add())
    upstream.script(text="", tool_calls=(("add", '{"a": 1, "b": 1}'),))
    run = runner.run(RunRequest(input=user("loop")))
    with pytest.raises(ToolLoopLimitReached, match=r"agents\.defaults\.tools\.maxIterations"):
        await run.wait()
    assert len(upstream.requests) == 3


@pytest_twisted.ensureDeferred
async def test_a_client_tool_ends_the_run_after_the_server_tools_of_its_reply(
        make_runner, upstream):
    runner = make_runner(upstream_config(upstream), Add())
    client_tool = {"type": "function", "function": {"name": "ask_user", "parameters": {
        "type": "object"}}}
    upstream.queue(text="", tool_calls=(("add", '{"a": 5, "b": 5}'),
                                        ("ask_user", '{"q": "ok?"}')))
    run = runner.run(RunRequest(input=user("x"), tools=(client_tool,)))
    events = collect(run)
    result = await run.wait()
    assert result.finish_reason == "tool_calls"
    assert [c.name for c in result.tool_calls] == ["ask_user"]
    assert len(upstream.requests) == 1
    offered = [t["function"]["name"] for t in upstream.requests[0].body["tools"]]
    assert offered == ["add", "ask_user"]
    tool_events = [e.data for e in events if e.stream == "tool"]
    ended = [d for d in tool_events if d.get("phase") == "end"]
    assert [d["preview"] for d in ended] == ["10"]        # the server tool ran
    deltas = [d for d in tool_events if "phase" not in d]
    assert {d["index"] for d in deltas} == {0}            # renumbered for the client
    assert deltas[0]["name"] == "ask_user"


@pytest_twisted.ensureDeferred
async def test_a_client_tool_named_like_a_server_tool_is_refused(make_runner, upstream):
    runner = make_runner(upstream_config(upstream), Add())
    clash = {"type": "function", "function": {"name": "add"}}
    with pytest.raises(InvalidRunRequest, match='"add"') as refused:
        runner.run(RunRequest(input=user("x"), tools=(clash,)))
    assert refused.value.param == "tools"
    assert upstream.requests == []


@pytest_twisted.ensureDeferred
async def test_failing_calls_become_error_results_for_the_model(make_runner, upstream):
    runner = make_runner(upstream_config(upstream), Add(), Refuse(), Broken())
    upstream.queue(text="", tool_calls=(
        ("add", "[1, 2]"), ("add", '{"a": 1}'), ("add", "{not json"), ("nosuch", "{}"),
        ("refuse", "{}"), ("broken", "{}")))
    upstream.queue(text="I see.")
    result = await runner.run(RunRequest(input=user("x"))).wait()
    assert result.text == "I see."
    errors = [json.loads(m["content"])["error"]
              for m in tool_messages(upstream.requests[1].body)]
    assert errors == ["the arguments must be a JSON object",
                      "missing required argument(s): b",
                      "the arguments are not valid JSON",
                      'unknown tool "nosuch"',
                      "refused: no such thing",
                      'the tool "broken" failed unexpectedly']


@pytest_twisted.ensureDeferred
async def test_long_results_are_cut_and_the_cut_is_marked(make_runner, upstream):
    runner = make_runner(with_limits(upstream_config(upstream), maxResultChars=100), Big())
    upstream.queue(text="", tool_calls=(("big", "{}"),))
    upstream.queue(text="ok")
    await runner.run(RunRequest(input=user("x"))).wait()
    [message] = tool_messages(upstream.requests[1].body)
    assert message["content"] == "x" * 100 + "…[truncated 150 characters]"


@pytest_twisted.ensureDeferred
async def test_cancelling_the_run_cancels_its_running_tools(make_runner, upstream, state_dir):
    gate = Gate()
    runner = make_runner(upstream_config(upstream), gate)
    upstream.queue(text="", tool_calls=(("gate", '{"n": 7}'),))
    run = runner.run(RunRequest(input=user("x")))
    await until(lambda: 7 in gate.waiting)
    run.cancel()
    with pytest.raises(RunCancelled):
        await run.wait()
    assert gate.cancelled == [7]
    assert len(upstream.requests) == 1


@pytest_twisted.ensureDeferred
async def test_over_http_the_client_never_sees_server_tool_calls(start_gateway, http):
    gw = await start_gateway(CHAT_ENABLED)
    gw.service.runner.tools_for = tools_of(Add())
    url = f"http://127.0.0.1:{gw.port}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    ask = [{"role": "user", "content": 'call add {"a": 40, "b": 2}'}]
    response = await http.post(url, json={"model": "moltbot:main", "messages": ask},
                               headers=headers)
    body = await response.json()
    assert response.code == 200, body
    message = body["choices"][0]["message"]
    assert message["content"] == "42" and not message.get("tool_calls")
    assert body["choices"][0]["finish_reason"] == "stop"

    response = await http.post(url, json={"model": "moltbot:main", "messages": ask,
                                          "stream": True}, headers=headers)
    text = (await treq.content(response)).decode()
    chunks = [json.loads(line[6:]) for line in text.splitlines()
              if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "42"
    assert not any("tool_calls" in d for d in deltas)

    clash = {"type": "function", "function": {"name": "add"}}
    response = await http.post(url, json={"model": "moltbot:main", "messages": ask,
                                          "tools": [clash]}, headers=headers)
    error = (await response.json())["error"]
    assert response.code == 400 and error["type"] == "invalid_request_error"
    assert '"add"' in error["message"]


@pytest_twisted.ensureDeferred
async def test_a_websocket_client_sees_tool_start_and_end_events(start_gateway):
    from .test_ws_protocol import agent_events, open_client

    gw = await start_gateway()
    gw.service.runner.tools_for = tools_of(Add())

    def scenario():
        client = open_client(gw.ws_url)
        request_id, accepted = client.request("agent", {
            "message": 'call add {"a": 1, "b": 1}', "idempotencyKey": "k-tools"})
        final = client.response(request_id)
        client.close()
        return client, accepted, final

    client, accepted, final = await threads.deferToThread(scenario)
    assert final["ok"] is True, final
    events = agent_events(client, accepted["payload"]["runId"])
    tool = [e["data"] for e in events if e["stream"] == "tool"]
    assert [d["phase"] for d in tool] == ["start", "end"]
    assert tool[0]["name"] == "add" and tool[0]["arguments"] == '{"a":1,"b":1}'
    assert tool[1]["callId"] == tool[0]["callId"] and tool[1]["ok"] is True
    assert "".join(e["data"].get("delta", "") for e in events
                   if e["stream"] == "assistant") == "2"


@pytest_twisted.ensureDeferred
async def test_the_agent_cli_prints_one_stderr_line_per_server_tool(start_gateway, tmp_path):
    from .test_ws_protocol import cli_env, run_cli

    gw = await start_gateway()
    gw.service.runner.tools_for = tools_of(Add())
    env = dict(cli_env(tmp_path / "cli-state"), PYTHONPATH=str(Path(__file__).parent.parent))
    out, err, code = await run_cli(env, "agent", "--url", gw.ws_url, "--message",
                                   'call add {"a": 20, "b": 22}')
    assert (out, code) == ("42\n", 0), err
    [line] = [line for line in err.splitlines() if line.startswith("[tool")]
    assert line.startswith("[tool add: ok, ") and line.endswith("ms] 42")


@pytest_twisted.ensureDeferred
async def test_a_forcing_tool_choice_applies_to_the_first_model_call_only(make_runner, upstream):
    runner = make_runner(upstream_config(upstream), Add())
    client_tool = {"type": "function", "function": {"name": "ask_user"}}
    upstream.queue(text="", tool_calls=(("add", '{"a": 1, "b": 1}'),))
    upstream.queue(text="2")
    result = await runner.run(RunRequest(input=user("x"), tools=(client_tool,),
                                         tool_choice="required")).wait()
    assert result.text == "2"
    assert [r.body["tool_choice"] for r in upstream.requests] == ["required", "auto"]


@pytest_twisted.ensureDeferred
async def test_over_responses_the_client_never_sees_server_tool_calls(start_gateway, http):
    raw = {"gateway": {"http": {"endpoints": {"responses": {"enabled": True}}}}}
    gw = await start_gateway(raw)
    gw.service.runner.tools_for = tools_of(Add())
    url = f"http://127.0.0.1:{gw.port}/v1/responses"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    ask = {"model": "moltbot:main", "input": 'call add {"a": 3, "b": 4}'}
    body = await (await http.post(url, json=ask, headers=headers)).json()
    assert [item["type"] for item in body["output"]] == ["message"], body
    assert body["output"][0]["content"][0]["text"] == "7"

    response = await http.post(url, json=dict(ask, stream=True), headers=headers)
    text = (await treq.content(response)).decode()
    assert "function_call" not in text and '"delta":"7"' in text


@pytest_twisted.ensureDeferred
async def test_the_run_timeout_cancels_a_running_tool(make_runner, upstream):
    gate = Gate()
    raw = upstream_config(upstream, timeoutSeconds=0.3)
    runner = make_runner(raw, gate)
    upstream.queue(text="", tool_calls=(("gate", '{"n": 3}'),))
    run = runner.run(RunRequest(input=user("x")))
    with pytest.raises(RunTimedOut):
        await run.wait()
    assert gate.cancelled == [3]


@pytest_twisted.ensureDeferred
async def test_a_reload_can_hand_the_runner_new_tools_for_new_runs(make_runner, upstream):
    runner = make_runner(upstream_config(upstream))
    upstream.queue(text="plain")
    await runner.run(RunRequest(input=user("x"))).wait()
    assert "tools" not in upstream.requests[0].body
    runner.reconfigure(runner.agents, runner.providers, tools_for=tools_of(Add()))
    upstream.queue(text="plain")
    await runner.run(RunRequest(input=user("x"))).wait()
    assert [t["function"]["name"] for t in upstream.requests[1].body["tools"]] == ["add"]
