"""The secrets no client or log line may ever see: every provider's ``apiKey`` and configured
``headers`` values, plus the gateway's own token or password. Built once from the config;
``redact`` (in ``upstream_errors.py``) blanks them out of any text an upstream sends back."""
from __future__ import annotations

from typing import Iterable, Optional

from ..config import ModelsConfig

# Shorter header values ("1", "on", "v2") are flags, not secrets, and blanking them would
# mangle every message that happens to contain them.
MIN_SECRET_CHARS = 4


def configured_secrets(models: ModelsConfig,
                       extra: Iterable[Optional[str]] = ()) -> tuple[str, ...]:
    """Every provider's apiKey and header values, and ``extra``, longest first (so a secret
    that contains another is blanked whole), without duplicates or too-short values."""
    found = set()
    for provider in models.providers.values():
        found.add(provider.apiKey)
        found.update(provider.headers.values())
    found.update(extra)
    return tuple(sorted((s for s in found if isinstance(s, str) and len(s) >= MIN_SECRET_CHARS),
                        key=lambda s: (-len(s), s)))
