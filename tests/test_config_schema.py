"""The pydantic config models: the JSON Schema ``moltbot-gw config schema`` prints, the
generated key table of docs/configuration.rst, and the wording of every kind of fault."""
from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path
from types import MappingProxyType

import json5
import jsonschema
import pydantic
import pytest

from moltbot_gw import cli
from moltbot_gw.config import (ConfigError, HistoryConfig, ProviderConfig, SessionConfig,
                               parse_config, render_key_table, with_overrides)
from moltbot_gw.config.docs import TABLE_END, TABLE_START

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "configuration.rst"
QUICKSTART = ROOT / "examples" / "quickstart.json5"


def errors_of(raw, env=None):
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env=env or {})
    return info.value.errors


@pytest.fixture(scope="module")
def schema():
    return json.loads(_run_cli(["config", "schema"]))


def _run_cli(argv):
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(argv) == 0
    return out.getvalue()


def test_schema_accepts_the_quickstart_and_the_documented_example(schema):
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(json5.loads(QUICKSTART.read_text(encoding="utf-8")), schema)
    example = DOCS.read_text(encoding="utf-8").split(".. code-block:: js\n", 1)[1]
    example = json5.loads(textwrap.dedent(example))
    assert example["agents"]["list"][1]["model"]["fallbacks"]
    jsonschema.validate(example, schema)


def test_schema_rejects_a_typo_and_a_bad_value(schema):
    raw = json5.loads(QUICKSTART.read_text(encoding="utf-8"))
    raw["gateway"]["prot"] = 1
    with pytest.raises(jsonschema.ValidationError) as typo:
        jsonschema.validate(raw, schema)
    assert "prot" in typo.value.message
    for bad in ({"gateway": {"port": 70000}}, {"gateway": {"auth": {"mode": "tokn"}}},
                {"agents": {"defaults": {"timeoutSeconds": 0}}},
                {"gateway": {"limits": {"perClientQueue": -1}}},
                {"agents": {"list": [{"name": "no id"}]}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_schema_describes_every_key(schema):
    gateway = schema["$defs"]["GatewayConfig"]["properties"]
    assert gateway["port"]["description"] == "TCP port for HTTP and WebSocket"
    assert gateway["port"]["maximum"] == 65535
    assert schema["$defs"]["AuthConfig"]["properties"]["token"]["description"].startswith(
        "bearer token")


def test_key_table_in_the_docs_is_the_generated_one():
    text = DOCS.read_text(encoding="utf-8")
    between = text.split(TABLE_START + "\n", 1)[1].split(TABLE_END, 1)[0]
    assert between.strip() == render_key_table().strip(), \
        "docs/configuration.rst is stale: run `moltbot-gw config docs`"


def test_validate_prints_three_errors_with_paths(tmp_path, capsys):
    bad = tmp_path / "bad.json5"
    bad.write_text('{gateway: {prot: 1, port: 70000}, agents: {list: [{id: "a", '
                   'model: "nomodel"}]}}')
    assert cli.main(["config", "validate", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "3 error(s)" in err
    assert "gateway.prot: unknown key (known keys: auth, bind, http, limits, metrics, port, " \
           "shutdownGraceSeconds, trustedProxies, ws)" in err
    assert "gateway.port: expected a port number 0-65535, got 70000" in err
    assert 'agents.list[0].model.primary: expected a model reference "provider/model", ' \
           'got "nomodel"' in err


def test_an_objects_unknown_keys_come_before_its_other_faults_as_documented():
    assert errors_of({"gateway": {"auth": {"mode": "tokn"}, "prot": 18789}}) == [
        "gateway.prot: unknown key (known keys: auth, bind, http, limits, metrics, port, "
        "shutdownGraceSeconds, trustedProxies, ws)",
        'gateway.auth.mode: expected "token" or "password", got "tokn"']


@pytest.mark.parametrize("raw, expected", [
    ({"gateway": {"port": "5"}}, 'gateway.port: expected an integer, got "5"'),
    ({"gateway": {"port": True}}, "gateway.port: expected an integer, got true"),
    ({"gateway": {"port": 1.5}}, "gateway.port: expected an integer, got 1.5"),
    ({"gateway": {"limits": {"perClientQueue": -1}}},
     "gateway.limits.perClientQueue: expected zero or more, got -1"),
    ({"gateway": {"limits": {"wsWriteBurst": 0}}},
     "gateway.limits.wsWriteBurst: expected a positive number, got 0"),
    ({"gateway": {"metrics": {"enabled": "yes"}}},
     'gateway.metrics.enabled: expected a boolean, got "yes"'),
    ({"gateway": {"trustedProxies": ["10.0.0.0/8", "proxy"]}},
     'gateway.trustedProxies[1]: expected an IP address or CIDR network, got "proxy"'),
    ({"gateway": {"http": {"sessionHeaders": "x-session"}}},
     'gateway.http.sessionHeaders: expected a list, got "x-session"'),
    ({"gateway": {"http": {"sessionHeaders": ["bad header"]}}},
     'gateway.http.sessionHeaders[0]: expected an HTTP header name, got "bad header"'),
    ({"gateway": {"auth": []}}, "gateway.auth: expected an object, got a list"),
    ({"agents": {"defaults": {"model": 3}}},
     'agents.defaults.model: expected "provider/model" or {primary, fallbacks}, got 3'),
    ({"agents": {"list": [{"name": "x"}]}}, "agents.list[0].id: required"),
    ({"session": {"idleDays": 0}}, "session.idleDays: expected a positive number, got 0"),
    ({"models": {"providers": {"x": {"api": "anthropic-messages", "baseUrl": "ftp://h"}}}},
     'models.providers.x.baseUrl: expected an http(s) URL, got "ftp://h"'),
    ([], "config: expected an object, got a list"),
])
def test_each_kind_of_fault_is_worded_as_documented(raw, expected):
    assert errors_of(raw) == [expected]


def test_json5_numbers_and_null_sections_mean_what_they_did():
    config = parse_config({"gateway": {"port": 1e3, "auth": None},
                           "agents": {"defaults": {"timeoutSeconds": 5}}}, env={})
    assert config.gateway.port == 1000 and isinstance(config.gateway.port, int)
    assert config.gateway.auth.mode == "token"
    assert config.agents.defaults.timeoutSeconds == 5.0
    assert isinstance(config.agents.defaults.timeoutSeconds, float)


def test_provider_secrets_are_hidden_in_errors_and_repr():
    errors = errors_of({"models": {"providers": {"x": {
        "api": "anthropic-messages", "apiKey": 12345, "headers": {"X-Key": 67890}}}}})
    assert errors == ["models.providers.x.apiKey: expected a string, got (hidden)",
                      "models.providers.x.headers.X-Key: expected a string, got (hidden)"]
    config = parse_config({"models": {"providers": {"x": {
        "api": "anthropic-messages", "apiKey": "sk-secret-1", "headers": {"X-Key": "hdr-2"}}}},
        "gateway": {"auth": {"password": "pw-secret-3", "mode": "password"}}}, env={})
    shown = repr(config) + str(config)
    assert not any(s in shown for s in ("sk-secret-1", "hdr-2", "pw-secret-3"))


def test_field_errors_and_cross_field_errors_are_reported_together():
    errors = errors_of({"gateway": {"prot": 1},
                        "agents": {"defaults": {"model": "nope/x"},
                                   "list": [{"id": "a", "timeoutSeconds": -1}]}})
    assert errors[0].startswith("gateway.prot: unknown key")
    assert "agents.list[0].timeoutSeconds: expected a positive number, got -1" in errors
    assert any(e.startswith('agents.defaults.model: unknown provider "nope"') for e in errors)
    assert len(errors) == 3


def test_mappings_are_read_only_and_objects_frozen():
    config = parse_config({"models": {"providers": {"x": {
        "api": "anthropic-messages", "headers": {"a": "b"}}}}}, env={})
    assert isinstance(config.models.providers, MappingProxyType)
    assert isinstance(config.models.providers["x"].headers, MappingProxyType)
    with pytest.raises(TypeError):
        config.models.providers["y"] = config.models.providers["x"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.session = SessionConfig()


def test_sub_configs_are_built_by_keyword_and_validated():
    assert SessionConfig(maxSessionsPerAgent=3).maxSessionsPerAgent == 3
    assert HistoryConfig(maxMessages=4).maxTokens == 100000
    assert dict(ProviderConfig(api="openai-completions", baseUrl="http://h",
                               headers={"a": "b"}).headers) == {"a": "b"}
    with pytest.raises(pydantic.ValidationError):
        SessionConfig(maxSessionsPerAgent=0)
    with pytest.raises(pydantic.ValidationError):
        HistoryConfig(maxMesages=4)


def test_overrides_are_validated_like_file_values():
    config = parse_config({}, env={})
    changed = with_overrides(config, port=0, bind="lan")
    assert (changed.gateway.port, changed.gateway.interface) == (0, "0.0.0.0")
    assert changed.state_dir == config.state_dir
    with pytest.raises(ConfigError) as info:
        with_overrides(config, port=70000, bind="everywhere")
    assert info.value.errors == [
        "--port: expected a port number 0-65535, got 70000",
        '--bind: expected "loopback", "lan" or an IP address, got "everywhere"']
