"""SIGHUP reloads the config of the running daemon without dropping connections; an invalid
file is rejected with its errors logged and the old config stays in force."""
from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request

import websocket

from .test_daemon import Daemon, env  # noqa: F401  (fixture)

CONNECT = {"type": "req", "id": "c", "method": "connect", "params": {
    "minProtocol": 1, "maxProtocol": 1,
    "client": {"id": "test", "version": "0", "platform": "linux"}}}


def write_config(path, agents, token="first-token", extra=""):
    agent_list = ", ".join(f'{{id: "{a}"}}' for a in agents)
    path.write_text(f"""{{gateway: {{auth: {{token: "{token}"}}, shutdownGraceSeconds: 2,
        http: {{endpoints: {{chatCompletions: {{enabled: true}}}}}}}}, {extra}
        agents: {{list: [{agent_list}]}}}}""")


def model_ids(port, token):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return [m["id"] for m in json.loads(response.read())["data"]]


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.05)
    return False


def read_log(daemon):
    """Everything the daemon printed so far (its stdout is a pipe; read what is there)."""
    import os
    import select
    out = []
    fd = daemon.proc.stdout.fileno()
    while select.select([fd], [], [], 0.2)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out.append(chunk.decode("utf-8", "replace"))
    return "".join(out)


def test_sighup_applies_a_valid_config_and_keeps_the_old_one_when_invalid(tmp_path, env):
    config = tmp_path / "gw.json5"
    write_config(config, ["main"])
    daemon = Daemon(["--config", str(config), "--port", "0"], env, tmp_path)
    try:
        _host, port = daemon.wait_listening()
        assert model_ids(port, "first-token") == ["moltbot:main"]
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=5)
        ws.send(json.dumps({**CONNECT, "params": {**CONNECT["params"],
                                                   "auth": {"token": "first-token"}}}))
        assert json.loads(ws.recv())["ok"] is True

        # A valid change: a new agent and a new token, no restart.
        write_config(config, ["main", "beta"], token="second-token")
        daemon.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: model_ids(port, "second-token") == ["moltbot:main",
                                                                    "moltbot:beta"])
        try:
            model_ids(port, "first-token")
            raise AssertionError("the old token still works")
        except urllib.error.HTTPError as e:
            assert e.code == 401
        ws.send(json.dumps({"type": "req", "id": "h", "method": "health", "params": {}}))
        answer = json.loads(ws.recv())
        while answer.get("type") != "res":       # skip tick events
            answer = json.loads(ws.recv())
        assert answer["id"] == "h" and answer["ok"] is True   # the connection survived
        ws.close()

        # An invalid change: rejected, logged, the old config stays in force.
        config.write_text('{gateway: {prot: 1}, agents: {list: [{id: "gamma"}]}}')
        daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        log = ""
        while "Config reload rejected" not in log and time.monotonic() < deadline:
            log += read_log(daemon)
        assert "Config reload rejected, keeping the old config: gateway.prot: unknown key" in log
        assert model_ids(port, "second-token") == ["moltbot:main", "moltbot:beta"]
    finally:
        assert daemon.stop() == 0
    everything = log + "".join(daemon.lines)
    assert "first-token" not in everything and "second-token" not in everything
