"""``POST /v1/responses``: the OpenAI Responses API over agent runs.

``ResponsesEndpoint.handle`` does everything a route needs — enabled check, method, auth,
validation, agent and session choice, the run, JSON or SSE — and answers errors itself in the
OpenAI error shape, so a router only has to call it.

Session choice: the ``x-moltbot-session-key`` header (or a configured session header) names
one; otherwise the session of the previous response; otherwise ``user``'s session (shared
with chat completions). A call with none of these is stateless like a chat completion: no
session is created; its conversation is kept in the response index (bounded; in memory, or
in Redis with the redis store backend, where every process sees it) so that
``previous_response_id`` can continue it. ``store: false`` keeps nothing.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ..agents.client_slots import RunSlots
from ..agents.registry import AgentRegistry
from ..agents.run import HistoryOwner, RunRequest, RunResult
from ..agents.runner import AgentRunner, cap_history
from ..auth import Authenticator
from ..config import Config, HistoryConfig
from ..http_auth import require_auth
from ..redis import RedisUnavailable
from .errors import APIError, api_error_for_run_failure, method_not_allowed, not_found, write_error
from .headers import AGENT_ID_HEADERS, MODEL_HEADERS, header, session_from_headers, user_session
from .images import ImageBudget, fetch_remote_images
from .request_limits import RequestLimits
from .response_index import ResponseIndex, ResponseStore, StoredResponse
from .responses_request import ResponsesRequest, parse_responses_request, referenced_item_ids
from .responses_stream import ResponseShell, ResponsesStream, new_id, response_body
from .run_endpoint import RunEndpoint
from .runs import await_run


def reply_message(result: RunResult) -> Optional[dict]:
    """The run's answer as a chat message for a stored conversation (None if it said
    nothing: providers reject empty assistant messages)."""
    if not result.text and not result.tool_calls:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": result.text or None}
    if result.tool_calls:
        message["tool_calls"] = [
            {"id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": call.arguments}}
            for call in result.tool_calls]
    return message


class ResponsesEndpoint(RunEndpoint):
    log = Logger()

    def __init__(self, config: Config, auth: Authenticator, agents: AgentRegistry,
                 runner: AgentRunner, clock, fetcher,
                 client_slots: Optional[RunSlots] = None,
                 response_index: Optional[ResponseStore] = None):
        super().__init__(config, auth, agents, runner, clock, client_slots)
        endpoints = config.gateway.http.endpoints
        self.enabled = endpoints.responses.enabled
        # Image limits and the keepalive interval are those of chat completions.
        self.chat = endpoints.chatCompletions
        self.limits = RequestLimits.for_responses(endpoints.responses)
        # The service passes its one index in (it must outlive a config reload, which
        # builds a new endpoint); an endpoint built alone gets its own.
        self.responses: ResponseStore = (
            response_index if response_index is not None else ResponseIndex(
                endpoints.responses.maxStoredResponses, endpoints.responses.maxStoredBytes))
        self.fetcher = fetcher  # the guarded fetcher, shared with chat completions

    async def handle(self, request) -> bytes:
        """Answer one request to ``/v1/responses`` (any method)."""
        if not self.enabled:
            return not_found(request)       # as if absent, whatever the method
        if request.method != b"POST":
            return method_not_allowed(request, ["POST"])
        try:
            return await self._respond(request)
        except APIError as error:
            return write_error(request, error)

    async def _respond(self, request) -> bytes:
        require_auth(request, self.auth)
        images = ImageBudget(self.chat.images)
        body = request.content.read()
        referenced = await self._shared(self.responses.lookup_items(referenced_item_ids(body)))
        parsed = parse_responses_request(body, images, referenced.get, self.limits)
        previous = None
        if parsed.previous_response_id is not None:
            previous = await self._shared(self.responses.lookup(parsed.previous_response_id))
            if previous is None:
                raise APIError(404, f"Previous response with id "
                                    f"'{parsed.previous_response_id}' not found.",
                               param="previous_response_id",
                               code="previous_response_not_found")
        requested = parsed.agent_id or header(request, AGENT_ID_HEADERS)
        if requested is None and previous is not None:
            requested = previous.agent_id   # continuing: the agent that answered before
        agent = self.agent_for(requested, parsed.model)
        if previous is not None and previous.agent_id != agent.id:
            raise APIError(400, f"previous_response_id belongs to agent "
                                f'"{previous.agent_id}", not "{agent.id}"',
                           param="previous_response_id", code="invalid_value")
        response_id = new_id("resp")
        session_key, history_owner = self._session(request, agent.id, parsed, previous)
        history = parsed.history
        if previous is not None and previous.session_key is None:
            history = tuple(previous.conversation) + history   # an anonymous chain
        if images.remote:
            await fetch_remote_images(images, self.fetcher)
        run = await self.start_run(request, RunRequest(
            input=parsed.input, agent_id=agent.id, session_key=session_key,
            client_history=history, extra_system_prompt=parsed.system_prompt,
            history_owner=history_owner,
            model=header(request, MODEL_HEADERS), options=parsed.options,
            persist=session_key is not None, record=parsed.store,
            stream=parsed.stream, tools=parsed.tools, tool_choice=parsed.tool_choice,
            parallel_tool_calls=parsed.parallel_tool_calls))
        shell = ResponseShell(response_id, int(self.clock.seconds()), parsed.model,
                              parsed.echo)
        stream = None
        if parsed.stream:
            stream = ResponsesStream(request, shell, self.chat.keepaliveSeconds, self.clock,
                                     flow=run.flow)
            run.subscribe(stream.on_event)
        result, failed = await await_run(run, stream)
        if failed is not None:
            return failed
        if stream is not None:
            answer = stream.finish(result)
            assert stream.body is not None  # finish() sent it
            body = stream.body
        else:
            body = response_body(shell, result, int(self.clock.seconds()))
            request.setHeader(b"content-type", b"application/json")
            answer = json.dumps(body, separators=(",", ":")).encode("utf-8")
        if parsed.store:
            session = run.session_key if session_key is not None else None
            try:
                await self._remember(response_id, agent.id, agent.history, session, history,
                                     parsed, result, body["output"])
            except RedisUnavailable as e:   # the answer is made: give it, not continuable
                self.log.warn("Response {id} not stored: {problem}", id=response_id,
                              problem=str(e))
        return answer

    @staticmethod
    async def _shared(pending: Deferred) -> Any:
        """``pending``'s result; the index in Redis being unreachable is a 503."""
        try:
            return await pending
        except RedisUnavailable as e:
            raise api_error_for_run_failure(e) from e

    def _remember(self, response_id: str, agent_id: str, limits: HistoryConfig,
                  session_key: Optional[str], history: tuple, parsed: ResponsesRequest,
                  result: RunResult, output: list[Mapping[str, Any]]) -> Deferred:
        """Keep the response for ``previous_response_id`` and its output items for
        ``item_reference``; an anonymous one also keeps its conversation (the session of
        one that has a session holds it already), no more of it than the agent's history
        limits would ever send to the model."""
        conversation: tuple = ()
        if session_key is None:
            reply = reply_message(result)
            conversation = tuple(cap_history(
                (*history, *parsed.input, *([reply] if reply else [])), limits))
        items = {item["id"]: item for item in output}
        return self.responses.store(response_id, StoredResponse(agent_id, session_key,
                                                                conversation, items))

    def _session(self, request, agent_id: str, parsed: ResponsesRequest,
                 previous: Optional[StoredResponse]) -> tuple[Optional[str], HistoryOwner]:
        """The session key of the run (None for a stateless, anonymous one) and who owns its
        history: the headers' session (``session_from_headers``), else the previous
        response's, else ``user``'s. The client owns it only for a configured session
        header with no ``previous_response_id`` (its input is then the whole conversation),
        as for chat completions."""
        chosen = session_from_headers(request, agent_id, self.session_headers)
        if chosen is not None:
            owner: HistoryOwner = ("client" if chosen.client_owns_history and previous is None
                                   else "store")
            return chosen.key, owner
        if previous is not None:
            return previous.session_key, "store"   # None: an anonymous chain stays anonymous
        if parsed.user is not None:
            return user_session(agent_id, parsed.user), "store"
        return None, "store"
