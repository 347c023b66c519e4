"""What one turn writes to its session's transcript: the client's messages, the tool loop's
steps and the reply, as transcript records (the record format of ``sessions/transcript.py``).
``AgentRunner`` stores them; this module only shapes them."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from .run import Run, RunResult


def message_record(message: Mapping[str, Any], run_id: str, now: int,
                   origin: Optional[str] = None) -> dict[str, Any]:
    """A transcript ``message`` record of a chat message the client sent; ``origin``
    "client" marks an earlier message taken from the client's conversation (an edit)."""
    record = {"type": "message", "role": message.get("role", "user"),
              "content": message.get("content"), "runId": run_id, "ts": now}
    if message.get("tool_call_id") is not None:
        record["tool_call_id"] = message["tool_call_id"]
    if message.get("tool_calls"):
        record["tool_calls"] = [dict(call) for call in message["tool_calls"]]
    if origin is not None:
        record["origin"] = origin
    return record


def error_message(error: BaseException) -> str:
    return getattr(error, "message", None) or str(error) or type(error).__name__


def turn_records(run: Run, inputs: Sequence[Mapping[str, Any]], status: str, now: int,
                 result: Optional[RunResult] = None, error: Optional[Exception] = None,
                 before: Sequence[Mapping[str, Any]] = (),
                 steps: Sequence[Mapping[str, Any]] = ()
                 ) -> tuple[list[Mapping[str, Any]], Optional[dict[str, int]]]:
    """The turn's records (``before``, the inputs, the tool steps, the reply) and the usage
    it adds to the session's totals."""
    records: list[Mapping[str, Any]] = list(before)
    records += [message_record(message, run.run_id, now) for message in inputs]
    records += [message_record(message, run.run_id, now) for message in steps]
    # the steps' texts were said first: the reply is what the model said after them
    said = sum(len(m.get("content") or "") for m in steps if m.get("role") == "assistant")
    reply: dict[str, Any] = {"type": "message", "role": "assistant",
                             "content": run.text[said:],
                             "runId": run.run_id, "ts": now, "status": status}
    usage = None
    if result is not None:
        usage = {"prompt_tokens": result.usage.prompt_tokens,
                 "completion_tokens": result.usage.completion_tokens,
                 "total_tokens": result.usage.total_tokens}
        reply.update(usage=usage, model=result.model, finishReason=result.finish_reason)
        if result.tool_calls:
            reply["tool_calls"] = [
                {"id": call.id, "type": "function",
                 "function": {"name": call.name, "arguments": call.arguments}}
                for call in result.tool_calls]
    if error is not None:
        reply["error"] = {"kind": getattr(error, "kind", "error"),
                          "message": error_message(error)}
    records.append(reply)
    return records, usage
