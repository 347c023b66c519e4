"""How a run's end reads over the WebSocket: the result payload of a run that ended well,
the error response of one that did not, and the same as JSON for another gateway process
(the Redis backend stores it for ``agent.wait`` there).
"""
from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from ..agents.failures import describe_failure
from ..agents.run import Run, RunResult
from .frames import ProtocolError, failure_error


def result_payload(result: RunResult) -> dict:
    return {"runId": result.run_id, "agentId": result.agent_id,
            "sessionKey": result.session_key, "status": "ok", "text": result.text,
            "finishReason": result.finish_reason, "model": result.model,
            "usage": {"inputTokens": result.usage.prompt_tokens,
                      "outputTokens": result.usage.completion_tokens,
                      "totalTokens": result.usage.total_tokens}}


def run_error(error: BaseException, run: Run) -> ProtocolError:
    """How a run failed (``agents/failures.py`` says what a client is told), as an error
    response that names the run."""
    failure = describe_failure(error)
    return failure_error(failure, details={
        "runId": run.run_id, "sessionKey": run.session_key,
        "status": "aborted" if failure.kind.aborted else "error", "text": run.text})


async def wait_for(run: Run) -> dict:
    """The run's result payload once it ends; ``ProtocolError`` if it failed."""
    try:
        result = await run.wait()
    except defer.CancelledError:
        raise  # our wait was cancelled (the connection closed), not the run
    except Exception as error:
        raise run_error(error, run) from error
    return result_payload(result)


def outcome_json(run: Run, outcome: Any) -> dict:
    """The end of ``run`` (a ``RunResult`` or a ``Failure``) as another process answers it."""
    if isinstance(outcome, Failure):
        error = outcome.value
        assert error is not None   # a Failure always holds its exception
        return {"ok": False, "error": run_error(error, run).to_json()}
    return {"ok": True, "payload": result_payload(outcome)}


def from_outcome_json(outcome: dict) -> dict:
    """The result payload ``outcome_json`` stored; raises its ``ProtocolError``."""
    if outcome.get("ok"):
        return outcome["payload"]
    error = outcome.get("error") or {}
    raise ProtocolError(error.get("code", "INTERNAL"), error.get("message", "the run failed"),
                        retry_after_ms=error.get("retryAfterMs"), details=error.get("details"))
