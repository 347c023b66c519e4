"""``POST /v1/responses``: the OpenAI Responses API over agent runs.

``ResponsesEndpoint.handle`` does everything a route needs — enabled check, method, auth,
validation, agent and session choice, the run, JSON or SSE — and answers errors itself in the
OpenAI error shape, so a router only has to call it.

Every response is stored in a session so ``previous_response_id`` can continue it: the
``x-moltbot-session-key`` header (or a configured session header) names one; otherwise the
session of the previous response; otherwise ``user``'s session (shared with chat
completions); otherwise a new session ``agent:<id>:responses:<id of this response>``. The
map from response id to session is in memory (the newest ``MAX_REMEMBERED`` responses), so
it does not survive a restart.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

from twisted.logger import Logger

from ..agents.registry import AgentRegistry, UnknownAgent
from ..agents.run import RunRequest
from ..agents.runner import AgentRunner
from ..auth import GatewayAuth
from ..config import Config
from ..http_auth import require_auth
from ..sessions.keys import make_session_key
from .headers import (AGENT_ID_HEADERS, MODEL_HEADERS, SESSION_KEY_HEADERS, header,
                      named_session, session_header_names)
from .errors import (APIError, method_not_allowed, not_found,
                     write_error)
from .images import ImageBudget, fetch_remote_images
from .runs import await_run, start_run
from .responses_request import ResponsesRequest, parse_responses_request
from .responses_stream import ResponseShell, ResponsesStream, new_id, response_body

MAX_REMEMBERED = 10_000



@dataclass(frozen=True)
class StoredResponse:
    agent_id: str
    session_key: str


class ResponseIndex:
    """Response id → the session that produced it; least recently used ids are forgotten
    beyond ``capacity``."""

    def __init__(self, capacity: int = MAX_REMEMBERED):
        self.capacity = capacity
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, response_id: str, stored: StoredResponse) -> None:
        self._entries[response_id] = stored
        self._entries.move_to_end(response_id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def get(self, response_id: str) -> Optional[StoredResponse]:
        stored = self._entries.get(response_id)
        if stored is not None:
            self._entries.move_to_end(response_id)
        return stored


class ResponsesEndpoint:
    log = Logger()

    def __init__(self, config: Config, auth: GatewayAuth, agents: AgentRegistry,
                 runner: AgentRunner, clock, fetcher, capacity: int = MAX_REMEMBERED):
        self.config = config
        self.auth = auth
        self.agents = agents
        self.runner = runner
        self.clock = clock
        endpoints = config.gateway.http.endpoints
        self.enabled = endpoints.responses.enabled
        # Image limits and the keepalive interval are those of chat completions.
        self.chat = endpoints.chatCompletions
        self.session_headers = session_header_names(config)
        self.responses = ResponseIndex(capacity)
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
        parsed = parse_responses_request(request.content.read(), images)
        previous = None
        if parsed.previous_response_id is not None:
            previous = self.responses.get(parsed.previous_response_id)
            if previous is None:
                raise APIError(404, f"Previous response with id "
                                    f"'{parsed.previous_response_id}' not found.",
                               param="previous_response_id",
                               code="previous_response_not_found")
        requested = parsed.agent_id or header(request, AGENT_ID_HEADERS)
        if requested is None and previous is not None:
            requested = previous.agent_id   # continuing: the agent that answered before
        try:
            agent = self.agents.get(requested)
        except UnknownAgent as e:
            raise APIError(404, f"The model '{parsed.model}' does not exist: there is no "
                                f'agent "{e.agent_id}"', param="model", code="model_not_found")
        if previous is not None and previous.agent_id != agent.id:
            raise APIError(400, f"previous_response_id belongs to agent "
                                f'"{previous.agent_id}", not "{agent.id}"',
                           param="previous_response_id", code="invalid_value")
        response_id = new_id("resp")
        session_key = self._session(request, agent.id, parsed, previous, response_id)
        if images.remote:
            await fetch_remote_images(images, self.fetcher)
        run = start_run(self.runner, RunRequest(
            input=parsed.input, agent_id=agent.id, session_key=session_key,
            client_history=parsed.history, extra_system_prompt=parsed.system_prompt,
            model=header(request, MODEL_HEADERS), options=parsed.options, persist=True,
            stream=parsed.stream, tools=parsed.tools, tool_choice=parsed.tool_choice,
            parallel_tool_calls=parsed.parallel_tool_calls))
        self.responses.add(response_id, StoredResponse(agent.id, run.session_key))
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
            return stream.finish(result)
        body = response_body(shell, result, int(self.clock.seconds()))
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body, separators=(",", ":")).encode("utf-8")

    def _session(self, request, agent_id: str, parsed: ResponsesRequest,
                 previous: Optional[StoredResponse], response_id: str) -> str:
        explicit = header(request, SESSION_KEY_HEADERS)
        if explicit is not None:
            return explicit            # resolved (and checked) by the runner
        for name in self.session_headers:
            value = header(request, (name,))
            if value is not None:
                return named_session(agent_id, f"openai-chat:{value}", name.decode())
        if previous is not None:
            return previous.session_key
        if parsed.user is not None:
            return named_session(agent_id, f"openai-user:{parsed.user}", "user")
        return make_session_key(agent_id, f"responses:{response_id}")

