"""The OpenAI-compatible HTTP API under ``/v1``: request translation only. Every route
authenticates first; agent runs go through the runtime, never around it.
"""
from __future__ import annotations

import json
from typing import Optional

from klein import Klein
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ..agents.client_slots import RunSlots
from ..agents.registry import AgentRegistry, UnknownAgent
from ..agents.run import HistoryOwner, RunRequest, client_model_error
from ..agents.runner import AgentRunner
from ..auth import Authenticator
from ..config import Config, parse_model_ref
from ..fetch import GuardedFetcher
from ..http_auth import require_auth
from ..providers.errors import ProviderError
from ..providers.interface import IEmbeddingProvider
from ..sessions.keys import openai_session_key
from .chat_request import is_task_prompt, parse_chat_request
from .chat_response import ChatStream, completion_body, response_model, stream_models
from .completions import TextCompletionStream, parse_completion_request, text_completion_body
from .embeddings import embeddings_body, parse_embeddings_request
from .errors import APIError, api_error_for_run_failure, method_not_allowed, not_found, write_error
from .headers import (
    AGENT_ID_HEADERS,
    MODEL_HEADERS,
    SESSION_KEY_HEADERS,
    header,
    session_from_headers,
    user_session,
)
from .images import ImageBudget, fetch_remote_images
from .request_common import agent_from_model
from .request_limits import RequestLimits
from .response_index import ResponseStore
from .responses import ResponsesEndpoint
from .run_endpoint import RunEndpoint
from .runs import await_run


def _require_enabled_method(request, enabled: bool, methods: tuple[str, ...]) -> None:
    """404 for any method while the endpoint is off; 405 for a wrong method once it is on."""
    if not enabled:
        raise NotFound()
    if request.method.decode("ascii", "replace") not in methods:
        raise MethodNotAllowed(valid_methods=list(methods))


def _json(request, payload) -> bytes:
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


class OpenAIRoutes(RunEndpoint):
    """Klein app for ``/v1``; built per gateway, so tests may run many in one process."""

    app = Klein()
    log = Logger()

    def __init__(self, config: Config, auth: Authenticator, agents: AgentRegistry,
                 runner: AgentRunner, clock, fetcher: Optional[GuardedFetcher] = None,
                 client_slots: Optional[RunSlots] = None,
                 response_index: Optional[ResponseStore] = None):
        super().__init__(config, auth, agents, runner, clock, client_slots)
        endpoints = config.gateway.http.endpoints
        self.chat = endpoints.chatCompletions
        self.chat_limits = RequestLimits.for_chat(self.chat)
        # Remote images come through the guarded fetcher (its own client, never the
        # providers' pool); the service passes one in, tests one with their own policy.
        self.fetcher = fetcher if fetcher is not None else GuardedFetcher(clock)
        self.models_enabled = endpoints.chatCompletions.enabled or endpoints.responses.enabled
        self.created = int(clock.seconds())
        self.responses_endpoint = ResponsesEndpoint(config, auth, agents, runner, clock,
                                                     self.fetcher,
                                                     client_slots=self.client_slots,
                                                     response_index=response_index)

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
        named = agent_from_model(model_id)
        try:
            agent = self.agents.get(model_id if named is None else named)
        except UnknownAgent:
            raise APIError(404, f"The model '{model_id}' does not exist", param="model",
                           code="model_not_found") from None
        return _json(request, self._model_entry(agent.id))

    @app.route("/chat/completions")
    async def chat_completions(self, request):
        _require_enabled_method(request, self.chat.enabled, ("POST",))
        require_auth(request, self.auth)
        images = ImageBudget(self.chat.images)
        chat = parse_chat_request(request.content.read(), images, self.chat_limits)
        agent = self.agent_for(chat.agent_id or header(request, AGENT_ID_HEADERS), chat.model)
        session_key, persist, history_owner = self._session(request, agent.id, chat)
        if images.remote:
            await fetch_remote_images(images, self.fetcher)
        model_override = header(request, MODEL_HEADERS)
        run = await self.start_run(request, RunRequest(
            input=chat.input, agent_id=agent.id, session_key=session_key,
            client_history=chat.history, history_owner=history_owner,
            extra_system_prompt=chat.system_prompt,
            model=model_override, options=chat.options, persist=persist,
            stream=chat.stream, tools=chat.tools, tool_choice=chat.tool_choice,
            parallel_tool_calls=chat.parallel_tool_calls))
        return await self._answer(request, run, chat, agent, model_override, ChatStream,
                                  completion_body)

    @app.route("/completions")
    async def completions(self, request):
        """Legacy text completions on the chat path (same switch, auth and agent choice).
        Stateless unless ``x-moltbot-session-key`` names a session: such clients put the
        whole conversation in the prompt, so ``user`` selects none."""
        _require_enabled_method(request, self.chat.enabled, ("POST",))
        require_auth(request, self.auth)
        text = parse_completion_request(request.content.read(), self.chat.maxTotalChars)
        agent = self.agent_for(text.agent_id or header(request, AGENT_ID_HEADERS), text.model)
        session_key = header(request, SESSION_KEY_HEADERS)
        model_override = header(request, MODEL_HEADERS)
        run = await self.start_run(request, RunRequest(
            input=({"role": "user", "content": text.prompt},), agent_id=agent.id,
            session_key=session_key or openai_session_key(agent.id),
            model=model_override, options=text.options, persist=session_key is not None,
            stream=text.stream))
        return await self._answer(request, run, text, agent, model_override,
                                  TextCompletionStream, text_completion_body)

    async def _answer(self, request, run, parsed, agent, model_override, stream_class,
                      body_of) -> bytes:
        """Await a chat or text completion's run and answer it: ``stream_class`` chunks
        when the request streams, else the ``body_of(result, model, created)`` JSON."""
        created = int(self.clock.seconds())
        # The model field names the agent: echo it. Else name the model that answers.
        names_agent = parsed.agent_id is not None
        stream = None
        if parsed.stream:
            models = stream_models(parsed.model, names_agent, model_override,
                                   agent.model.chain)
            stream = stream_class(request, run.run_id, models, created, parsed.include_usage,
                                  self.chat.keepaliveSeconds, self.clock, flow=run.flow)
            run.subscribe(stream.on_event)
        result, failed = await await_run(run, stream)
        if failed is not None:
            return failed
        if stream is not None:
            return stream.finish(result)
        model = response_model(parsed.model, names_agent, result.model)
        return _json(request, body_of(result, model, created))

    @app.route("/responses")
    async def responses(self, request):
        return await self.responses_endpoint.handle(request)

    @app.route("/embeddings")
    async def embeddings(self, request):
        _require_enabled_method(request, self.models_enabled, ("POST",))
        require_auth(request, self.auth)
        embedding = parse_embeddings_request(request.content.read())
        ref = embedding.model
        agent_id = agent_from_model(embedding.model)
        if agent_id is not None:
            try:
                agent = self.agents.get(agent_id)
            except UnknownAgent:
                raise APIError(404, f"The model '{embedding.model}' does not exist",
                               param="model", code="model_not_found") from None
            if not agent.embedding_model:
                raise APIError(400, f'agent "{agent.id}" has no embeddingModel configured',
                               param="model", code="invalid_value")
            ref = agent.embedding_model
        parsed = parse_model_ref(ref)
        if parsed is None:
            raise APIError(400, 'model must be "provider/model" or "moltbot:<agentId>"',
                           param="model", code="invalid_value")
        provider_name, model_id = parsed
        if provider_name not in self.runner.providers:
            raise APIError(400, f'model provider "{provider_name}" is not configured',
                           param="model", code="invalid_value")
        provider = self.runner.providers.get(provider_name)
        if not IEmbeddingProvider.providedBy(provider):
            raise APIError(400, f'model provider "{provider_name}" does not offer embeddings',
                           param="model", code="embeddings_unsupported")
        try:
            # the provider's maxConcurrent covers embeddings too (a llama.cpp slot serves both)
            slot = await self.runner.providers.slots(provider_name).acquire()
            try:
                answer = await provider.embeddings(model_id, embedding.input,
                                                   embedding.encoding_format,
                                                   embedding.dimensions)
            finally:
                slot.release()
        except ProviderError as e:
            # a "provider/model" the client named is its own choice; an agent's is config
            chosen = embedding.model if agent_id is None else None
            error = api_error_for_run_failure(client_model_error(e, chosen))
            if error.code == "model_not_found":
                error.param = "model"           # the body's field here, not a header
            raise error from e
        return _json(request, embeddings_body(answer, embedding.model))

    def _session(self, request, agent_id: str, chat) -> tuple[str, bool, HistoryOwner]:
        """The session key of a chat request, whether the run may touch the session, and
        who owns its history (``RunRequest.history_owner``): the headers' session
        (``session_from_headers``), then ``user``'s; otherwise a fresh key that is never
        stored. Background task prompts never read or write a session
        (statelessTaskPrompts)."""
        if self.chat.statelessTaskPrompts and is_task_prompt(chat):
            return openai_session_key(agent_id), False, "store"
        chosen = session_from_headers(request, agent_id, self.session_headers)
        if chosen is not None:
            return chosen.key, True, "client" if chosen.client_owns_history else "store"
        if chat.user is not None:
            return user_session(agent_id, chat.user), True, "store"
        # a fresh per-request session: not stored
        return openai_session_key(agent_id), False, "store"

    @app.handle_errors(APIError)
    def api_error(self, request, failure):
        return write_error(request, failure.value)

    @app.handle_errors(NotFound)
    def no_such_route(self, request, failure):
        return not_found(request)

    @app.handle_errors(MethodNotAllowed)
    def wrong_method(self, request, failure):
        return method_not_allowed(request, failure.value.valid_methods)

    @app.handle_errors(Exception)
    def internal_error(self, request, failure):
        self.log.failure("unhandled error on {path}", failure,
                         path=request.path.decode("utf-8", "replace"))
        return write_error(request, APIError(500, "internal error", code="internal_error"))
