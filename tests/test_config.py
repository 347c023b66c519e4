"""Config loading and validation: paths, env, defaults and error messages."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from moltbot_gw.config import (Config, ConfigError, iter_keys, load_config, parse_config,
                               resolve_config_path, resolve_state_dir)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.rst"


def errors_of(raw, env=None):
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env=env or {})
    return info.value.errors


def test_empty_config_gives_documented_defaults():
    config = parse_config({}, env={})
    assert config.gateway.port == 18789
    assert config.gateway.interface == "127.0.0.1"
    assert config.gateway.auth.mode == "token"
    assert config.gateway.http.endpoints.chatCompletions.enabled is False
    assert config.gateway.http.endpoints.chatCompletions.maxBodyBytes == 20 * 1024 * 1024
    assert config.agents.defaults.model.primary == "builtin/echo"
    assert config.agents.defaults.maxConcurrent == 64


def test_unknown_key_and_wrong_type_are_both_reported_with_paths():
    errors = errors_of({"gateway": {"prot": 1, "port": "x", "auth": {"mode": "tokn"}}})
    assert any(e.startswith("gateway.prot: unknown key") for e in errors)
    assert 'gateway.port: expected an integer, got "x"' in errors
    assert 'gateway.auth.mode: expected "token" or "password", got "tokn"' in errors


def test_nested_lists_and_maps_report_indexed_paths():
    errors = errors_of({"agents": {"list": [{"id": "a"}, {"id": "b", "modle": "x"}]},
                        "models": {"providers": {"oai": {"api": "openai", "baseUrl": 3}}}})
    assert any(e.startswith("agents.list[1].modle: unknown key") for e in errors)
    assert any(e.startswith("models.providers.oai.api: expected") for e in errors)
    assert "models.providers.oai.baseUrl: expected a string, got 3" in errors


def test_frozen_objects():
    config = parse_config({}, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.gateway.port = 1


def test_env_references_are_substituted_and_missing_ones_are_errors():
    raw = {"models": {"providers": {"openai": {"api": "openai-completions",
                                               "baseUrl": "http://127.0.0.1:1/v1",
                                               "apiKey": "${OPENAI_KEY}"}}}}
    config = parse_config(raw, env={"OPENAI_KEY": "sk-123"})
    assert config.models.providers["openai"].apiKey == "sk-123"
    assert errors_of(raw) == [
        "models.providers.openai.apiKey: environment variable OPENAI_KEY is not set"]


def test_gateway_secrets_from_env_override_the_file():
    raw = {"gateway": {"auth": {"token": "from-file"}}}
    assert parse_config(raw, env={"CLAWDBOT_GATEWAY_TOKEN": "env"}).gateway.auth.token == "env"
    assert parse_config(raw, env={"MOLTBOT_GATEWAY_TOKEN": "m"}).gateway.auth.token == "m"
    config = parse_config({}, env={"CLAWDBOT_GATEWAY_PASSWORD": "pw"})
    assert config.gateway.auth.mode == "password"
    assert config.gateway.auth.explicit_secret == "pw"


def test_secrets_never_appear_in_errors_or_repr():
    errors = errors_of({"gateway": {"auth": {"token": 12345}}})
    assert errors == ["gateway.auth.token: expected a string, got (hidden)"]
    config = parse_config({"gateway": {"auth": {"token": "s3cr3t-value"}}}, env={})
    assert "s3cr3t-value" not in repr(config)


def test_bind_must_be_loopback_lan_or_an_ip():
    assert parse_config({"gateway": {"bind": "lan"}}, env={}).gateway.interface == "0.0.0.0"
    assert parse_config({"gateway": {"bind": "::1"}}, env={}).gateway.is_loopback_only
    assert errors_of({"gateway": {"bind": "everywhere"}}) == [
        'gateway.bind: expected "loopback", "lan" or an IP address, got "everywhere"']


def test_agent_ids_models_and_defaults_are_cross_checked():
    errors = errors_of({"agents": {"list": [
        {"id": "Main", "default": True}, {"id": "main", "default": True},
        {"id": "bad id!"}, {"id": "c", "model": {"primary": "nope/x"}},
        {"id": "d", "model": "nomodel"}]}})
    assert 'agents.list[1].id: duplicate agent id "main"' in errors
    assert any(e.startswith("agents.list[2].id: expected a lowercase id") for e in errors)
    assert any(e.startswith('agents.list[3].model: unknown provider "nope"') for e in errors)
    assert "agents.list: more than one agent is marked default" in errors


def test_model_ref_must_be_provider_slash_model():
    assert errors_of({"agents": {"list": [{"id": "d", "model": "nomodel"}]}}) == [
        'agents.list[0].model.primary: expected a model reference "provider/model", '
        'got "nomodel"']


def test_openai_provider_needs_base_url():
    assert errors_of({"models": {"providers": {"x": {"api": "openai-completions"}}}}) == [
        "models.providers.x.baseUrl: required for openai-completions"]


def test_config_path_resolution(tmp_path):
    assert resolve_config_path("/a.json5", {"MOLTBOT_CONFIG_PATH": "/b"}) == Path("/a.json5")
    assert resolve_config_path(None, {"MOLTBOT_CONFIG_PATH": "/b"}) == Path("/b")
    assert resolve_config_path(None, {"CLAWDBOT_CONFIG_PATH": "/c"}) == Path("/c")
    assert resolve_config_path(None, {"MOLTBOT_STATE_DIR": "/s"}) == Path("/s/moltbot.json")
    assert resolve_state_dir({"CLAWDBOT_STATE_DIR": "/t"}) == Path("/t")
    assert resolve_state_dir({}) == Path("~/.moltbot").expanduser()


def test_missing_default_file_means_defaults_but_missing_named_file_is_an_error(tmp_path):
    config = load_config(None, env={"MOLTBOT_STATE_DIR": str(tmp_path)})
    assert config.gateway.port == 18789 and config.state_dir == tmp_path
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "absent.json5"), env={})
    assert "config file not found" in info.value.errors[0]


def test_json5_file_with_comments_and_trailing_commas_loads(tmp_path):
    path = tmp_path / "c.json5"
    path.write_text("// comment\n{gateway: {port: 1234,},}\n")
    assert load_config(str(path), env={}).gateway.port == 1234
    path.write_text("{gateway: ")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), env={})
    assert "not valid JSON5" in info.value.errors[0]


def test_every_config_key_is_documented():
    text = DOCS.read_text(encoding="utf-8")
    missing = [key for key, _ in iter_keys(Config) if f"``{key}``" not in text]
    assert missing == []
