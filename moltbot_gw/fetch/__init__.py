"""Outbound fetches made on a client's behalf (remote images today, ``web_fetch`` later):
an address policy, a resolver that enforces it on every connection, and a bounded fetch.
Nothing here knows about OpenAI, images or agents."""
from .address_policy import DEFAULT_POLICY, AddressPolicy
from .guarded_fetch import FetchError, FetchFailed, FetchRefused, FetchResult, GuardedFetcher
from .resolver import GuardedReactor, GuardedResolver

__all__ = ["AddressPolicy", "DEFAULT_POLICY", "FetchError", "FetchFailed", "FetchRefused",
           "FetchResult", "GuardedFetcher", "GuardedReactor", "GuardedResolver"]
