"""The agent runtime against real loopback upstreams: events, history, lanes, fallbacks,
cancellation, timeouts and transcripts."""
from __future__ import annotations

import json
import sys

import pytest
import pytest_twisted
from twisted.internet import reactor, utils
from twisted.internet.task import deferLater

from moltbot_gw.agents.registry import AgentRegistry
from moltbot_gw.agents.run import InvalidRunRequest, RunCancelled, RunRequest, RunTimedOut
from moltbot_gw.agents.runner import AgentRunner, cap_history
from moltbot_gw.config import HistoryConfig, parse_config
from moltbot_gw.providers.errors import ProviderUnavailable
from moltbot_gw.providers.registry import ProviderRegistry
from moltbot_gw.sessions.store import SessionStore


@pytest_twisted.async_yield_fixture
async def make_runner(state_dir):
    registries, stores = [], []

    def make(raw):
        config = parse_config(raw, env={}, state_dir=state_dir)
        providers = ProviderRegistry(config.models, reactor)
        registries.append(providers)
        stores.append(SessionStore(state_dir, reactor))
        return AgentRunner(AgentRegistry(config), providers, stores[-1],
                           reactor, config.agents.defaults.maxConcurrent)

    yield make
    for providers in registries:
        await providers.close()
    for store in stores:
        await store.flush()   # the batched index saves, not left to a timer


def upstream_config(up, **agent):
    return {"models": {"providers": {"up": {"api": "openai-completions",
                                             "baseUrl": up.base_url}}},
            "agents": {"list": [{"id": "main", "model": "up/gpt-test", **agent}]}}


def user(text):
    return ({"role": "user", "content": text},)


def transcript_records(state_dir, agent="main"):
    records = []
    for path in sorted((state_dir / "agents" / agent / "sessions").glob("*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if r["type"] == "message"]


@pytest_twisted.ensureDeferred
async def test_echo_run_streams_events_in_order_and_records_the_turn(make_runner, state_dir):
    runner = make_runner({})
    run = runner.run(RunRequest(input=user("hello there friend"), session_key="s1"))
    events = []
    run.subscribe(events.append)
    result = await run.wait()
    assert result.text == "hello there friend"
    assert result.model == "builtin/echo" and result.session_key == "agent:main:s1"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].data["phase"] == "start" and events[-1].data["phase"] == "end"
    assert "".join(e.data["delta"] for e in events if e.stream == "assistant") == result.text
    records = transcript_records(state_dir)
    assert [(r["role"], r["content"]) for r in records] == [
        ("user", "hello there friend"), ("assistant", "hello there friend")]
    assert records[1]["status"] == "ok" and records[1]["usage"]["completion_tokens"] == 3


@pytest_twisted.ensureDeferred
async def test_upstream_text_and_history_replayed_on_the_next_turn(make_runner, upstream):
    upstream.script(text="first answer")
    runner = make_runner(upstream_config(upstream, systemPrompt="Be brief."))
    result = await runner.run(RunRequest(input=user("question one"), session_key="h")).wait()
    assert result.text == "first answer" and result.model == "up/gpt-test"
    upstream.script(text="second answer")
    await runner.run(RunRequest(input=user("question two"), session_key="h")).wait()
    sent = upstream.requests[-1].body
    assert sent["model"] == "gpt-test" and sent["stream"] is True
    assert [(m["role"], m["content"]) for m in sent["messages"]] == [
        ("system", "Be brief."), ("user", "question one"), ("assistant", "first answer"),
        ("user", "question two")]


@pytest_twisted.ensureDeferred
async def test_stateless_run_touches_no_session(make_runner, state_dir):
    runner = make_runner({})
    await runner.run(RunRequest(input=user("x"), session_key="tmp", persist=False)).wait()
    assert not (state_dir / "agents").exists()


@pytest_twisted.ensureDeferred
async def test_client_history_is_used_only_when_the_session_has_none(make_runner, upstream):
    runner = make_runner(upstream_config(upstream))
    request_history = ({"role": "user", "content": "earlier"},
                       {"role": "assistant", "content": "reply"})
    await runner.run(RunRequest(input=user("now"), session_key="c",
                                client_history=request_history)).wait()
    assert [m["content"] for m in upstream.requests[-1].body["messages"]] == [
        "earlier", "reply", "now"]
    await runner.run(RunRequest(input=user("next"), session_key="c",
                                client_history=request_history)).wait()
    # stored history wins: the first turn stored is "now" + its answer
    contents = [m["content"] for m in upstream.requests[-1].body["messages"]]
    assert contents[0] == "now" and contents[-1] == "next" and "earlier" not in contents


@pytest_twisted.ensureDeferred
async def test_sampling_options_and_extra_system_prompt_reach_the_provider(make_runner,
                                                                           upstream):
    runner = make_runner(upstream_config(upstream, systemPrompt="Agent prompt."))
    await runner.run(RunRequest(input=user("x"), extra_system_prompt="Request prompt.",
                                options={"temperature": 0.2, "max_tokens": 7, "seed": 3,
                                         "stop": ["END"], "bogus": 1})).wait()
    body = upstream.requests[-1].body
    assert body["messages"][0] == {"role": "system",
                                   "content": "Agent prompt.\n\nRequest prompt."}
    assert (body["temperature"], body["max_tokens"], body["seed"], body["stop"]) == (
        0.2, 7, 3, ["END"])
    assert "bogus" not in body


@pytest_twisted.ensureDeferred
async def test_workspace_files_join_the_system_prompt(make_runner, upstream, tmp_path):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "AGENTS.md").write_text("Rules of the house.")
    (tmp_path / "ws" / "SOUL.md").write_text("A calm soul.")
    runner = make_runner(upstream_config(upstream, systemPrompt="Persona.",
                                         workspace=str(tmp_path / "ws")))
    await runner.run(RunRequest(input=user("x"))).wait()
    assert upstream.requests[-1].body["messages"][0]["content"] == (
        "Persona.\n\nRules of the house.\n\nA calm soul.")


@pytest_twisted.ensureDeferred
async def test_primary_503_falls_back_to_the_next_model(make_runner, upstream):
    upstream.queue(status=503, error="overloaded")
    upstream.queue(text="from the fallback")
    runner = make_runner(upstream_config(
        upstream, model={"primary": "up/primary-model", "fallbacks": ["up/backup-model"]}))
    run = runner.run(RunRequest(input=user("x")))
    events = []
    run.subscribe(events.append)
    result = await run.wait()
    assert result.text == "from the fallback" and result.model == "up/backup-model"
    assert [r.body["model"] for r in upstream.requests] == ["primary-model", "backup-model"]
    assert any(e.data.get("phase") == "fallback" for e in events)


@pytest_twisted.ensureDeferred
async def test_non_retryable_error_does_not_fall_back(make_runner, upstream):
    upstream.queue(status=400, error="bad request")
    runner = make_runner(upstream_config(
        upstream, model={"primary": "up/a", "fallbacks": ["up/b"]}))
    with pytest.raises(Exception) as info:
        await runner.run(RunRequest(input=user("x"))).wait()
    assert getattr(info.value, "kind", "") == "upstream_bad_request"
    assert len(upstream.requests) == 1


@pytest_twisted.ensureDeferred
async def test_failed_run_is_recorded_as_error(make_runner, upstream, state_dir):
    upstream.script(status=503, error="down")
    runner = make_runner(upstream_config(upstream))
    with pytest.raises(ProviderUnavailable):
        await runner.run(RunRequest(input=user("x"), session_key="f")).wait()
    records = transcript_records(state_dir)
    assert records[-1]["status"] == "error" and records[-1]["role"] == "assistant"
    assert not runner.active


@pytest_twisted.ensureDeferred
async def test_cancel_closes_the_upstream_connection_within_100ms(make_runner, upstream,
                                                                  state_dir):
    upstream.script(text="one two three four five six", delay=0.2)
    runner = make_runner(upstream_config(upstream))
    run = runner.run(RunRequest(input=user("x"), session_key="cx"))
    deltas = []
    run.subscribe(lambda e: e.stream == "assistant" and deltas.append(e))
    while not deltas:
        await deferLater(reactor, 0.01)
    cancelled_at = reactor.seconds()
    run.cancel()
    with pytest.raises(RunCancelled):
        await run.wait()
    lost_at = await upstream.requests[-1].connection_lost
    assert lost_at - cancelled_at < 0.1
    records = transcript_records(state_dir)
    assert records[-1]["status"] == "aborted" and records[-1]["content"] == "one "


@pytest_twisted.ensureDeferred
async def test_run_timeout_cancels_the_run(make_runner, upstream):
    upstream.script(stall_before_headers=5)
    raw = upstream_config(upstream, timeoutSeconds=0.3)
    runner = make_runner(raw)
    with pytest.raises(RunTimedOut):    # the upstream would have answered after 5 s
        await runner.run(RunRequest(input=user("x"))).wait()


@pytest_twisted.ensureDeferred
async def test_twenty_runs_on_one_session_complete_in_submission_order(make_runner,
                                                                      state_dir):
    runner = make_runner({})
    runs = [runner.run(RunRequest(input=user(f"message {i}"), session_key="lane"))
            for i in range(20)]
    finished = []
    for i, run in enumerate(runs):
        run.wait().addCallback(lambda _r, i=i: finished.append(i))
    for run in runs:
        await run.wait()
    assert finished == list(range(20))
    records = transcript_records(state_dir)
    assert len(records) == 40
    assert [r["content"] for r in records[::2]] == [f"message {i}" for i in range(20)]
    assert [r["role"] for r in records] == ["user", "assistant"] * 20


@pytest_twisted.ensureDeferred
async def test_runs_on_different_sessions_overlap_in_time(make_runner, upstream):
    upstream.script(text="a b", delay=0.1)
    runner = make_runner(upstream_config(upstream))
    spans = {}

    def track(i):
        def listener(event):
            if event.stream == "lifecycle" and event.data["phase"] in ("start", "end"):
                spans.setdefault(i, {})[event.data["phase"]] = reactor.seconds()
        return listener

    runs = []
    for i in range(20):
        run = runner.run(RunRequest(input=user("x"), session_key=f"s{i}"))
        run.subscribe(track(i))
        runs.append(run)
    for run in runs:
        await run.wait()
    latest_start = max(s["start"] for s in spans.values())
    earliest_end = min(s["end"] for s in spans.values())
    assert latest_start < earliest_end  # all 20 were running at the same moment


@pytest_twisted.ensureDeferred
async def test_global_cap_queues_excess_runs(make_runner, upstream):
    upstream.script(text="a", delay=0.1)
    raw = upstream_config(upstream)
    raw["agents"]["defaults"] = {"maxConcurrent": 2}
    runner = make_runner(raw)
    runs = [runner.run(RunRequest(input=user("x"), session_key=f"q{i}")) for i in range(5)]
    await deferLater(reactor, 0.05)
    assert len(upstream.requests) == 2
    for run in runs:
        await run.wait()
    assert len(upstream.requests) == 5


@pytest_twisted.ensureDeferred
async def test_bad_model_override_and_unknown_provider_are_refused_before_running(
        make_runner, upstream):
    raw = upstream_config(upstream, models=["up/allowed"])
    runner = make_runner(raw)
    with pytest.raises(InvalidRunRequest):
        runner.run(RunRequest(input=user("x"), model="up/not-allowed"))
    with pytest.raises(InvalidRunRequest):
        runner.run(RunRequest(input=user("x"), model="nope"))
    result = await runner.run(RunRequest(input=user("x"), model="up/allowed")).wait()
    assert result.model == "up/allowed"
    with pytest.raises(InvalidRunRequest):
        runner.run(RunRequest(input=user("x"), session_key="agent:other:s"))


def test_history_cap_keeps_the_newest_and_starts_with_a_user_turn():
    messages = []
    for i in range(10):
        messages += [{"role": "user", "content": f"q{i}"}, {"role": "assistant",
                                                           "content": f"a{i}"}]
    kept = cap_history(messages, HistoryConfig(maxMessages=5, maxTokens=10_000))
    assert [m["content"] for m in kept] == ["q8", "a8", "q9", "a9"]
    kept = cap_history(messages, HistoryConfig(maxMessages=200, maxTokens=12))
    assert [m["content"] for m in kept] == ["q9", "a9"]


@pytest_twisted.ensureDeferred
async def test_cli_agent_prints_the_upstream_reply_and_replays_the_session(tmp_path,
                                                                           upstream):
    config = tmp_path / "cli.json5"
    config.write_text(json.dumps(upstream_config(upstream)))
    env = {"MOLTBOT_STATE_DIR": str(tmp_path / "st"), "PATH": "/usr/bin:/bin"}
    args = ["-m", "moltbot_gw.cli", "agent", "--local", "--config", str(config),
            "--session-key", "k", "--message"]
    upstream.script(text="upstream says hi")
    out, err, code = await utils.getProcessOutputAndValue(sys.executable, args + ["first"],
                                                          env=env)
    assert (code, out.decode().strip()) == (0, "upstream says hi"), err
    out, err, code = await utils.getProcessOutputAndValue(sys.executable, args + ["second"],
                                                          env=env)
    assert code == 0, err
    assert [m["content"] for m in upstream.requests[-1].body["messages"]] == [
        "first", "upstream says hi", "second"]


@pytest_twisted.ensureDeferred
async def test_cli_agent_echoes_with_the_quickstart_config(tmp_path):
    from pathlib import Path
    quickstart = Path(__file__).resolve().parent.parent / "examples" / "quickstart.json5"
    out, err, code = await utils.getProcessOutputAndValue(
        sys.executable, ["-m", "moltbot_gw.cli", "agent", "--message", "hello there",
                         "--config", str(quickstart), "--local"],
        env={"MOLTBOT_STATE_DIR": str(tmp_path / "st"), "PATH": "/usr/bin:/bin"})
    assert (code, out.decode()) == (0, "hello there\n"), err
