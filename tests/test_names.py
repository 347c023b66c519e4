"""moltbot is the canonical name; the clawdbot aliases of environment variables and headers
are declared once (``moltbot_gw/names.py``) and documented once (issue 14)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from moltbot_gw import names
from moltbot_gw.config import parse_config, resolve_config_path, resolve_state_dir
from moltbot_gw.openai.cors import CorsPolicy

DOCS = Path(__file__).resolve().parent.parent / "docs"
ALIASED = [names.CONFIG_PATH_ENV, names.STATE_DIR_ENV, names.GATEWAY_TOKEN_ENV,
           names.GATEWAY_PASSWORD_ENV,
           *[tuple(n.decode("ascii") for n in pair) for pair in
             (names.AGENT_ID_HEADERS, names.SESSION_KEY_HEADERS, names.MODEL_HEADERS)]]


@pytest.mark.parametrize("pair", ALIASED, ids=lambda pair: pair[0])
def test_every_alias_is_in_the_one_table_and_nowhere_else_in_the_docs(pair):
    canonical, alias = pair
    assert "moltbot" in canonical.lower() and "clawdbot" in alias.lower()
    table = (DOCS / "configuration.rst").read_text(encoding="utf-8")
    after = table.split("Names and the clawdbot aliases\n", 1)[1].split("\n", 1)[1]
    section = re.split(r"\n[^\n]+\n-{3,}\n", after)[0]    # up to the next heading
    assert f"``{canonical}``" in section and f"``{alias}``" in section
    for page in DOCS.glob("*.rst"):
        text = page.read_text(encoding="utf-8")
        if page.name == "configuration.rst":
            text = text.replace(section, "")
        assert alias not in text, f"{page.name} names {alias} outside the aliases table"


def test_the_environment_answers_to_both_names_and_moltbot_wins():
    assert resolve_state_dir({"CLAWDBOT_STATE_DIR": "/old"}) == Path("/old")
    assert resolve_state_dir({"CLAWDBOT_STATE_DIR": "/old",
                              "MOLTBOT_STATE_DIR": "/new"}) == Path("/new")
    assert resolve_config_path(None, {"CLAWDBOT_CONFIG_PATH": "/c.json5"}) == Path("/c.json5")
    both = {"CLAWDBOT_GATEWAY_TOKEN": "old-token-xxxxxxxx",
            "MOLTBOT_GATEWAY_TOKEN": "new-token-xxxxxxxx"}
    assert parse_config({}, env=both).gateway.auth.token == "new-token-xxxxxxxx"
    password = parse_config({}, env={"CLAWDBOT_GATEWAY_PASSWORD": "old-password-xxxx"})
    assert password.gateway.auth.password == "old-password-xxxx"


def test_cors_allows_every_gateway_header_under_both_names():
    allowed = CorsPolicy(["https://app.example"]).allowed_headers.decode("ascii").split(", ")
    for pair in ALIASED[4:]:
        assert set(pair) <= set(allowed)
