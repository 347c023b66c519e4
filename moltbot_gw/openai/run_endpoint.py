"""``RunEndpoint``: what every ``/v1`` endpoint that answers with an agent run holds (config,
auth, agents, runner, clock, per-client run slots, the configured session headers) and does
the same way (choose the agent, start the run for the calling client). Not the routing."""
from __future__ import annotations

from typing import Optional

from ..agents.client_slots import ClientSlots, RunSlots
from ..agents.registry import Agent, AgentRegistry, UnknownAgent
from ..agents.run import Run, RunRequest
from ..agents.runner import AgentRunner
from ..auth import Authenticator
from ..config import Config
from ..http_auth import request_client_address
from .errors import APIError
from .headers import session_header_names
from .runs import start_run_for_client


class RunEndpoint:
    """Base of the chat/completions routes and the Responses endpoint."""

    def __init__(self, config: Config, auth: Authenticator, agents: AgentRegistry,
                 runner: AgentRunner, clock, client_slots: Optional[RunSlots] = None):
        self.config = config
        self.auth = auth
        self.agents = agents
        self.runner = runner
        self.clock = clock
        self.session_headers = session_header_names(config)
        limits = config.gateway.limits
        self.client_slots = client_slots or ClientSlots(limits.perClientConcurrency,
                                                        limits.perClientQueue)

    def agent_for(self, requested: Optional[str], model: str) -> Agent:
        """The agent ``requested`` names (the default for None); OpenAI's 404 for the
        request's ``model`` when there is no such agent."""
        try:
            return self.agents.get(requested)
        except UnknownAgent as e:
            raise APIError(404, f"The model '{model}' does not exist: there is no agent "
                                f'"{e.agent_id}"', param="model", code="model_not_found") from e

    async def start_run(self, request, run_request: RunRequest) -> Run:
        """Start ``run_request`` once the calling client has a free run slot."""
        return await start_run_for_client(self.runner, self.client_slots,
                                          request_client_address(request, self.auth),
                                          run_request)
