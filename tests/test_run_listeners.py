"""A failing run listener never breaks the run (issue 13, item 18), and ``agent --local``
prints the answer of a model that streams reasoning first."""
from __future__ import annotations

import json
import sys

import pytest_twisted
from twisted.internet import reactor, utils
from twisted.logger import globalLogPublisher

from moltbot_gw.agents.registry import AgentRegistry
from moltbot_gw.agents.run import RunRequest
from moltbot_gw.agents.runner import AgentRunner
from moltbot_gw.config import parse_config
from moltbot_gw.providers.registry import ProviderRegistry
from moltbot_gw.sessions.store import SessionStore


@pytest_twisted.ensureDeferred
async def test_a_raising_listener_is_dropped_and_the_run_and_other_listeners_go_on(
        state_dir):
    config = parse_config({}, env={}, state_dir=state_dir)
    providers = ProviderRegistry(config.models, reactor)
    runner = AgentRunner(AgentRegistry(config), providers, SessionStore(state_dir, reactor),
                         reactor, 4)
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        run = runner.run(RunRequest(input=({"role": "user", "content": "one two three"},),
                                    persist=False))
        calls = []

        def bad(event):
            calls.append(event)
            raise KeyError("delta")

        good = []
        run.subscribe(bad)
        run.subscribe(good.append)
        result = await run.wait()
    finally:
        globalLogPublisher.removeObserver(logged.append)
        await providers.close()
    assert result.text == "one two three" and result.finish_reason == "stop"
    assert len(calls) == 1                      # removed after its first failure
    assert good[-1].data["phase"] == "end"
    assert "".join(e.data.get("delta", "") for e in good if e.stream == "assistant") == \
        "one two three"
    failures = [e for e in logged if "listener failed" in e.get("log_format", "")]
    assert len(failures) == 1 and failures[0]["error"] == "KeyError"
    assert "log_failure" not in failures[0]     # no traceback in the log


@pytest_twisted.ensureDeferred
async def test_cli_agent_local_prints_the_answer_of_a_model_that_streams_reasoning(
        tmp_path, upstream):
    config = tmp_path / "cli.json5"
    config.write_text(json.dumps({
        "models": {"providers": {"up": {"api": "openai-completions",
                                         "baseUrl": upstream.base_url}}},
        "agents": {"list": [{"id": "main", "model": "up/thinker"}]}}))
    upstream.script(text="the answer", reasoning="let me think first")
    out, err, code = await utils.getProcessOutputAndValue(
        sys.executable, ["-m", "moltbot_gw.cli", "agent", "--local", "--config", str(config),
                         "--message", "why?"],
        env={"MOLTBOT_STATE_DIR": str(tmp_path / "st"), "PATH": "/usr/bin:/bin"})
    assert (code, out.decode()) == (0, "the answer\n"), err
    assert b"Traceback" not in err
