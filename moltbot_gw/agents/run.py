"""What a run is to its callers: the request that starts it, the handle they hold (events,
result, cancel) and the ways it can end. Protocol layers translate these; they never reach
into the runner."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..providers.base import FlowControl, ToolCall, Usage
from ..providers.errors import ProviderNotFound

HistoryOwner = Literal["store", "client"]   # whose history wins: see RunRequest
SAMPLING_OPTIONS = ("temperature", "top_p", "max_tokens", "stop", "seed", "presence_penalty",
                    "frequency_penalty", "response_format")


@dataclass(frozen=True)
class RunRequest:
    """One turn for an agent.

    ``input`` are the turn's new messages (``{"role": "user", "content": str | parts}``).
    ``client_history`` is conversation the client sent along (OpenAI-style requests resend
    it). ``history_owner`` says whose history wins: ``"store"`` (the default) uses it only
    when the session has none stored; ``"client"`` (a chat UI that resends the whole
    conversation) makes it the conversation, enriched with the stored records that match it,
    and records a branch where the stored history differs. ``persist=False``
    runs without reading or writing any session (stateless requests, background tasks);
    ``record=False`` reads the session's history but writes nothing to it.
    ``stream=False`` says nobody needs deltas as they come, so the provider may answer in
    one piece (cheaper for upstream and gateway); the run still emits that as one delta.
    """

    input: tuple[Mapping[str, Any], ...]
    agent_id: Optional[str] = None
    session_key: Optional[str] = None
    client_history: tuple[Mapping[str, Any], ...] = ()
    history_owner: HistoryOwner = "store"
    extra_system_prompt: Optional[str] = None
    model: Optional[str] = None                    # "provider/model" override for this run
    options: Mapping[str, Any] = field(default_factory=dict)  # SAMPLING_OPTIONS only
    persist: bool = True
    stream: bool = True
    tools: tuple[Mapping[str, Any], ...] = ()      # OpenAI-format function tools
    tool_choice: Any = None
    parallel_tool_calls: Optional[bool] = None
    record: bool = True


@dataclass(frozen=True)
class RunEvent:
    """``stream`` is "assistant" (data: {"delta"} for text, {"reasoning"} for reasoning),
    "tool" (a client tool call: data {"index", "id", "name", "argumentsDelta"}; id and name
    only in the first fragment of a call; a server tool the loop runs: data {"phase":
    "start", "callId", "name", "arguments"} then {"phase": "end", "callId", "name", "ok",
    "durationMs", "preview"}) or "lifecycle" (data: {"phase", ...})."""

    run_id: str
    seq: int
    stream: str
    data: Mapping[str, Any]

    def to_json(self) -> dict:
        return {"runId": self.run_id, "seq": self.seq, "stream": self.stream,
                "data": dict(self.data)}


@dataclass(frozen=True)
class RunResult:
    run_id: str
    agent_id: str
    session_key: str
    text: str
    finish_reason: str
    usage: Usage
    model: str                                     # "provider/model" that answered
    tool_calls: tuple[ToolCall, ...] = ()          # client tools the model asked to call
    reasoning: str = ""


class RunError(Exception):
    """Base of run failures that are not provider errors."""

    kind = "run_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class RunCancelled(RunError):
    kind = "aborted"


class RunTimedOut(RunError):
    kind = "timeout"


class InvalidRunRequest(RunError):
    """The request cannot run as given (unknown model, provider not configured, ...).
    ``param`` says which part of the request: "model" or "sessionKey"."""

    kind = "invalid_request"

    def __init__(self, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.param = param


class ModelNotFound(RunError):
    """The model the client chose (``RunRequest.model``) is one its provider does not serve:
    the client's mistake, unlike a 404 for the agent's own configured model."""

    kind = "model_not_found"
    param = "model"


def client_model_error(error: Exception, client_model: Optional[str]) -> Exception:
    """``error`` as the client's own when it chose the model (``client_model``, a
    "provider/model" ref) and the provider's 404 named that model; else ``error`` itself."""
    if (client_model is not None and isinstance(error, ProviderNotFound)
            and error.missing_model is not None):
        return ModelNotFound(f'model "{client_model}" was not found: {error.message}')
    return error


EventListener = Callable[[RunEvent], None]


class Run:
    """The handle of a started run."""

    log = Logger()

    def __init__(self, run_id: str, agent_id: str, session_key: str):
        self.run_id = run_id
        self.agent_id = agent_id
        self.session_key = session_key
        self._text_parts: list[str] = []
        self._text: Optional[str] = ""          # the parts joined, until the next part
        self.output_chars = 0         # text, reasoning and tool-call arguments streamed so far
        self.produced_output = False  # any text, reasoning or tool call streamed yet
        # Consumers that cannot keep up pause the upstream read (see FlowControl).
        self.flow = FlowControl()
        self._seq = 0
        self._listeners: list[EventListener] = []
        self._outcome: Optional[object] = None  # RunResult or Failure once done
        self._waiters: list[Deferred] = []
        self._on_finish: list[Callable[[object], None]] = []
        self._canceller: Optional[Callable[[], None]] = None  # set by the runner
        self.cancel_reason: Optional[str] = None  # "cancelled" or "timeout" once cancelled

    @property
    def text(self) -> str:
        """The reply text streamed so far."""
        if self._text is None:
            self._text = "".join(self._text_parts)
            self._text_parts = [self._text]
        return self._text

    def add_text(self, text: str) -> None:
        # Parts joined on demand: ``text += delta`` would copy the whole reply per delta.
        self._text_parts.append(text)
        self._text = None

    @property
    def done(self) -> bool:
        return self._outcome is not None

    def subscribe(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: EventListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def wait(self) -> Deferred:
        """A new Deferred of the ``RunResult`` (or the failure). Cancelling it only stops
        this wait; use ``cancel()`` to stop the run."""
        if isinstance(self._outcome, Failure):
            return fail(self._outcome)
        if self._outcome is not None:
            return succeed(self._outcome)
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    def on_finish(self, callback: Callable[[object], None]) -> None:
        """Call ``callback(outcome)`` once the run ends (the ``RunResult`` or the
        ``Failure``; at once if it has). For bookkeeping that needs no Deferred of its own
        (a Deferred per request costs more than the bookkeeping); called before the
        ``wait()`` Deferreds fire. A callback that raises is logged and the others go on."""
        if self._outcome is not None:
            self._call_finished(callback, self._outcome)
        else:
            self._on_finish.append(callback)

    def _call_finished(self, callback: Callable[[object], None], outcome: object) -> None:
        try:
            callback(outcome)
        except Exception as e:
            self.log.error("run {run_id}: an end-of-run callback failed ({error})",
                           run_id=self.run_id, error=type(e).__name__)

    def cancel(self, reason: str = "cancelled") -> None:
        if self.done or self._canceller is None:
            return
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self._canceller()

    # -- used by the runner ------------------------------------------------------------

    def emit(self, stream: str, data: Mapping[str, Any]) -> None:
        """Hand ``data`` to every listener. A listener that raises is logged once (its error
        type, no traceback: event data may be private) and gets no more events; the run and
        the other listeners go on, so one bad subscriber can never break a run."""
        self._seq += 1
        event = RunEvent(self.run_id, self._seq, stream, data)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception as e:
                self.unsubscribe(listener)
                self.log.error("run {run_id}: an event listener failed on a {stream} event "
                               "({error}); it was removed and the run goes on",
                               run_id=self.run_id, stream=stream, error=type(e).__name__)

    def finish(self, outcome: object) -> None:
        self._outcome = outcome
        callbacks, self._on_finish = self._on_finish, []
        for callback in callbacks:
            self._call_finished(callback, outcome)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(outcome)
