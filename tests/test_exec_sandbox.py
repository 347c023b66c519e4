"""Issue 15, acceptance 3: ``tools.exec.sandbox: "bwrap"`` for real (Debian's bubblewrap):
no write outside the workspace, no network connection, killed whole at its timeout; and a
gateway refusing to start with that config when bwrap is missing."""
from __future__ import annotations

import os
import shutil

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor

from moltbot_gw.config import parse_config
from moltbot_gw.service import GatewayService
from moltbot_gw.tools.exec import BwrapMissing

from .test_exec_tool import exec_tool, gone, marker, refused, run, until


def need_bwrap() -> None:
    if shutil.which("bwrap") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("bwrap is missing: CI must install it (apt-get install bubblewrap)")
        pytest.skip("bwrap is missing: apt-get install bubblewrap")


@pytest_twisted.ensureDeferred
async def test_bwrap_writes_only_in_the_workspace(tmp_path):
    need_bwrap()
    workspace, outside = tmp_path / "ws", tmp_path / "outside"
    outside.mkdir()
    tool = exec_tool(security="full", sandbox="bwrap")
    assert "exit code 0" in await run(tool, workspace, command="echo ok > inside.txt")
    assert (workspace / "inside.txt").read_text() == "ok\n"
    await refused(tool, workspace, command="touch /etc/moltbot-exec-x")
    await run(tool, workspace, command=f"touch {outside}/x || true")
    assert not os.path.exists("/etc/moltbot-exec-x") and not (outside / "x").exists()


@pytest_twisted.ensureDeferred
async def test_bwrap_has_no_network(tmp_path):
    need_bwrap()
    connections = []

    class Count(protocol.Protocol):
        def connectionMade(self):
            connections.append(1)

    port = reactor.listenTCP(0, protocol.Factory.forProtocol(Count), interface="127.0.0.1")
    try:
        number = port.getHost().port
        tool = exec_tool(security="full", sandbox="bwrap")
        message = await refused(tool, tmp_path / "ws", command=(
            "python3 -c \"import socket; socket.create_connection(('127.0.0.1', "
            f"{number}), 3)\""))
        assert "exit code 1" in message
    finally:
        await port.stopListening()
    assert connections == []


@pytest_twisted.ensureDeferred
async def test_bwrap_timeout_kills_the_sandboxed_command(tmp_path):
    need_bwrap()
    tool = exec_tool(security="full", sandbox="bwrap")
    first = marker()
    message = await refused(tool, tmp_path / "ws", command=f"sleep {first}", timeout=1)
    assert message.startswith("timed out after 1 s")
    assert await until(gone, first)


def test_the_gateway_refuses_to_start_with_bwrap_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))     # no bwrap there
    cfg = parse_config({"tools": {"exec": {"security": "full", "sandbox": "bwrap"}}},
                       env={}, state_dir=tmp_path / "state")
    with pytest.raises(BwrapMissing) as caught:
        GatewayService(cfg, reactor=reactor)
    assert '"bubblewrap"' in str(caught.value) and isinstance(caught.value, ValueError)
