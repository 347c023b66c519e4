"""The OpenAI-compatible HTTP API under ``/v1``: request translation only. Every route
authenticates first; agent runs go through the runtime, never around it.
"""
from __future__ import annotations

import json

from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ..agents.registry import AgentRegistry, UnknownAgent
from ..agents.run import InvalidRunRequest, RunRequest
from ..agents.runner import AgentRunner
from ..auth import GatewayAuth
from ..config import Config
from ..http_auth import require_auth
from ..sessions.keys import openai_session_key
from .chat_request import AGENT_MODEL_PREFIXES, parse_chat_request
from .chat_response import ChatStream, completion_body
from .errors import (APIError, api_error_for_run_failure, method_not_allowed, not_found,
                     write_error)

AGENT_ID_HEADERS = (b"x-moltbot-agent-id", b"x-clawdbot-agent-id")
SESSION_KEY_HEADERS = (b"x-moltbot-session-key", b"x-clawdbot-session-key")


def _header(request, names) -> str | None:
    for name in names:
        value = request.getHeader(name)
        if value is not None and value.strip():
            return value.decode("utf-8", "replace").strip()
    return None


def _require_enabled_method(request, enabled: bool, methods: tuple[str, ...]) -> None:
    """404 for any method while the endpoint is off; 405 for a wrong method once it is on."""
    if not enabled:
        raise NotFound()
    if request.method.decode("ascii", "replace") not in methods:
        raise MethodNotAllowed(valid_methods=list(methods))


def _json(request, payload) -> bytes:
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


class OpenAIRoutes:
    """Klein app for ``/v1``; built per gateway, so tests may run many in one process."""

    app = Klein()
    log = Logger()

    def __init__(self, config: Config, auth: GatewayAuth, agents: AgentRegistry,
                 runner: AgentRunner, clock):
        self.config = config
        self.auth = auth
        self.agents = agents
        self.runner = runner
        self.clock = clock
        endpoints = config.gateway.http.endpoints
        self.chat = endpoints.chatCompletions
        self.models_enabled = endpoints.chatCompletions.enabled or endpoints.responses.enabled
        self.created = int(clock.seconds())

    def resource(self):
        return self.app.resource()

    def _model_entry(self, agent_id: str) -> dict:
        return {"id": f"moltbot:{agent_id}", "object": "model", "created": self.created,
                "owned_by": "moltbot"}

    # Routes take every method and check it themselves: a disabled endpoint must answer 404
    # to any method, as if absent, not 405 revealing that it exists.

    @app.route("/models")
    def list_models(self, request):
        _require_enabled_method(request, self.models_enabled, ("GET", "HEAD"))
        require_auth(request, self.auth)
        return _json(request, {"object": "list",
                               "data": [self._model_entry(a.id) for a in self.agents]})

    @app.route("/models/<path:model_id>")
    def get_model(self, request, model_id):
        _require_enabled_method(request, self.models_enabled, ("GET", "HEAD"))
        require_auth(request, self.auth)
        name = model_id
        for prefix in AGENT_MODEL_PREFIXES:
            if name.lower().startswith(prefix):
                name = name[len(prefix):]
                break
        try:
            agent = self.agents.get(name)
        except UnknownAgent:
            raise APIError(404, f"The model '{model_id}' does not exist", param="model",
                           code="model_not_found")
        return _json(request, self._model_entry(agent.id))

    @app.route("/chat/completions")
    async def chat_completions(self, request):
        _require_enabled_method(request, self.chat.enabled, ("POST",))
        require_auth(request, self.auth)
        chat = parse_chat_request(request.content.read())
        try:
            agent = self.agents.get(chat.agent_id or _header(request, AGENT_ID_HEADERS))
        except UnknownAgent as e:
            raise APIError(404, f"The model '{chat.model}' does not exist: there is no agent "
                                f'"{e.agent_id}"', param="model", code="model_not_found")
        session_key = _header(request, SESSION_KEY_HEADERS)
        persist = True
        if session_key is None:
            try:
                session_key = openai_session_key(agent.id, chat.user)
            except ValueError as e:  # too long, control characters: the client's mistake
                raise APIError(400, f"user cannot name a session: {e}", param="user",
                               code="invalid_value")
            persist = chat.user is not None  # a fresh per-request session is not stored
        try:
            run = self.runner.run(RunRequest(
                input=chat.input, agent_id=agent.id, session_key=session_key,
                client_history=chat.history, extra_system_prompt=chat.system_prompt,
                options=chat.options, persist=persist, stream=chat.stream))
        except InvalidRunRequest as e:
            raise APIError(400, e.message, code="invalid_request")
        created = int(self.clock.seconds())
        stream = None
        if chat.stream:
            stream = ChatStream(request, run.run_id, chat.model, created, chat.include_usage,
                                self.chat.keepaliveSeconds, self.clock)
            run.subscribe(stream.on_event)
        try:
            result = await run.wait()
        except CancelledError:
            run.cancel()  # the client went away: stop the run and its upstream request
            raise
        except Exception as e:
            error = api_error_for_run_failure(e)
            if stream is not None and stream.started:
                return stream.fail(error)
            raise error
        if stream is not None:
            return stream.finish(result)
        return _json(request, completion_body(result, chat.model, created))

    @app.handle_errors(APIError)
    def api_error(self, request, failure):
        return write_error(request, failure.value)

    @app.handle_errors(NotFound)
    def not_found(self, request, failure):
        return not_found(request)

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request, failure):
        return method_not_allowed(request, failure.value.valid_methods)

    @app.handle_errors(Exception)
    def internal_error(self, request, failure):
        self.log.failure("unhandled error on {path}", failure,
                         path=request.path.decode("utf-8", "replace"))
        return write_error(request, APIError(500, "internal error", code="internal_error"))
