"""Starting and awaiting an agent run from an HTTP handler: the parts every OpenAI-shaped
endpoint shares (request errors, client disconnects, failures before or after a stream
started)."""
from __future__ import annotations

from twisted.internet.defer import CancelledError

from ..agents.client_slots import ClientBusy, RunSlots
from ..agents.run import InvalidRunRequest, Run, RunRequest
from ..redis.connection import RedisUnavailable
from .errors import api_error_for_run_failure


def start_run(runner, request: RunRequest) -> Run:
    """``runner.run(request)``, with a refused request as a 400 naming its header."""
    try:
        return runner.run(request)
    except InvalidRunRequest as e:
        raise api_error_for_run_failure(e) from e


async def start_run_for_client(runner, slots: RunSlots, client: str,
                               request: RunRequest) -> Run:
    """``start_run`` once ``client`` has a free run slot (waiting in its queue if need be,
    leaving it if the client goes away); the slot is held until the run ends. A full queue
    is 429 with ``Retry-After``."""
    try:
        slot = await slots.acquire(client)
    except (ClientBusy, RedisUnavailable) as busy:   # the shared slots: Redis is out, a 503
        raise api_error_for_run_failure(busy) from busy
    try:
        run = start_run(runner, request)
    except BaseException:
        slot.release()
        raise
    run.on_finish(lambda _outcome: slot.release())
    return run


async def await_run(run: Run, stream=None):
    """``(result, None)`` when the run ends well; ``(None, final_bytes)`` when it failed after
    ``stream`` had started (the stream wrote its error frame; ``final_bytes`` is what is left
    for the caller to write, empty for chat/text completions); raises the ``APIError`` of a
    failure before that. A client that leaves cancels the run (and its upstream request)."""
    try:
        return await run.wait(), None
    except CancelledError:
        run.cancel()
        raise
    except Exception as e:
        error = api_error_for_run_failure(e)
        if stream is not None and stream.started:
            return None, stream.fail(error)
        raise error from e
