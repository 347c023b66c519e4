"""The OpenAI-compatible HTTP API under ``/v1``: request translation only. Every route
authenticates first; agent runs go through the runtime, never around it.
"""
from __future__ import annotations

import json

from klein import Klein
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ..agents.registry import AgentRegistry, UnknownAgent
from ..auth import GatewayAuth
from ..config import Config
from ..http_auth import require_auth
from .errors import APIError, method_not_allowed, not_found, write_error

MODEL_PREFIXES = ("moltbot:", "agent:", "clawdbot:")


def _json(request, payload) -> bytes:
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


class OpenAIRoutes:
    """Klein app for ``/v1``; built per gateway, so tests may run many in one process."""

    app = Klein()
    log = Logger()

    def __init__(self, config: Config, auth: GatewayAuth, agents: AgentRegistry, clock):
        self.config = config
        self.auth = auth
        self.agents = agents
        self.clock = clock
        endpoints = config.gateway.http.endpoints
        self.models_enabled = endpoints.chatCompletions.enabled or endpoints.responses.enabled
        self.created = int(clock.seconds())

    def resource(self):
        return self.app.resource()

    def _model_entry(self, agent_id: str) -> dict:
        return {"id": f"moltbot:{agent_id}", "object": "model", "created": self.created,
                "owned_by": "moltbot"}

    @app.route("/models", methods=["GET"])
    def list_models(self, request):
        if not self.models_enabled:
            raise NotFound()
        require_auth(request, self.auth)
        return _json(request, {"object": "list",
                               "data": [self._model_entry(a.id) for a in self.agents]})

    @app.route("/models/<path:model_id>", methods=["GET"])
    def get_model(self, request, model_id):
        if not self.models_enabled:
            raise NotFound()
        require_auth(request, self.auth)
        name = model_id
        for prefix in MODEL_PREFIXES:
            if name.lower().startswith(prefix):
                name = name[len(prefix):]
                break
        try:
            agent = self.agents.get(name)
        except UnknownAgent:
            raise APIError(404, f"The model '{model_id}' does not exist", param="model",
                           code="model_not_found")
        return _json(request, self._model_entry(agent.id))

    @app.handle_errors(APIError)
    def api_error(self, request, failure):
        return write_error(request, failure.value)

    @app.handle_errors(NotFound)
    def not_found(self, request, failure):
        return not_found(request)

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request, failure):
        return method_not_allowed(request, failure.value.valid_methods)
