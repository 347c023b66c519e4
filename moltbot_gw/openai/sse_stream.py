"""What every SSE answer of the OpenAI-shaped endpoints shares: headers deferred until the
first output (so a run that fails before saying anything still gets a real HTTP status),
keepalive comments while nothing arrives, frames of one reactor turn sent as one HTTP chunk,
and backpressure from a slow client to the upstream read."""
from __future__ import annotations

KEEPALIVE_FRAME = b": keepalive\n\n"
SSE_HEADERS = ((b"content-type", b"text/event-stream; charset=utf-8"),
               (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no"))


class SSEStream:
    """Base of ``CompletionStream`` (chat and text completions) and ``ResponsesStream``;
    subclasses write their frames with ``_write`` and say what opens the stream in
    ``_opening``."""

    def __init__(self, request, keepalive_seconds: float, clock, flow=None):
        self.request = request
        self.started = False
        self.closed = False
        self._active_since_tick = False
        self._clock = clock
        self._pending: list[bytes] = []
        self._flush_call = None      # the end-of-turn flush, while frames are pending
        self._flow = flow            # the run's FlowControl: a slow client pauses upstream
        # A bare timer, re-armed by each tick: a LoopingCall would cost a Deferred and its
        # bookkeeping per response for the same ticks.
        self._keepalive_seconds = keepalive_seconds
        self._keepalive = clock.callLater(keepalive_seconds, self._tick)
        request.notifyFinish().addBoth(self._closed)

    def _opening(self) -> None:
        """Frames that open the stream, written once the headers go out."""

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        for name, value in SSE_HEADERS:
            self.request.setHeader(name, value)
        if self._flow is not None:
            self.request.registerProducer(self, True)
        self._opening()

    def _output(self) -> None:
        """Output is arriving: make sure the stream is open; no keepalive is due."""
        self.start()
        self._active_since_tick = True

    def _tick(self) -> None:
        self._keepalive = None
        self.start()
        if not self._active_since_tick:
            self._write(KEEPALIVE_FRAME)
        self._active_since_tick = False
        if not self.closed:
            self._keepalive = self._clock.callLater(self._keepalive_seconds, self._tick)

    def _stop_keepalive(self) -> None:
        call, self._keepalive = self._keepalive, None
        if call is not None and call.active():
            call.cancel()

    def _write(self, data: bytes) -> None:
        if not self._pending:
            self._flush_call = self._clock.callLater(0, self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()          # flushed early (the stream's end): no empty turn later
        pending, self._pending = self._pending, []
        if pending and not self.closed:
            self.request.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def _end(self) -> None:
        """The last frame is written: send everything now and let the upstream go."""
        self._stop_keepalive()
        self._flush()
        if self._flow is not None:
            if self.request.producer is self and not self.closed:
                self.request.unregisterProducer()
            self._flow.resume()

    def _closed(self, _result) -> None:
        self.closed = True
        self._stop_keepalive()

    # IPushProducer: the client's connection says when its buffer is full or drained.
    def pauseProducing(self) -> None:
        self._flow.pause()

    def resumeProducing(self) -> None:
        self._flow.resume()

    def stopProducing(self) -> None:
        self._flow.resume()  # the connection is gone; cancellation stops the run
