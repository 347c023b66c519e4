"""An idle gateway carries no feature it does not use (issue 16, idle RSS): with no MCP
server configured the ``mcp`` package (~30 MB of RSS) is never imported, and Beautiful
Soup/markdownify wait for the first page ``web_fetch`` converts. Checked in a fresh
interpreter that builds and starts the quickstart gateway (port 0)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest_twisted
from twisted.internet import utils

QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart.json5"

START_AND_LIST = """
import json, sys
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from moltbot_gw.config import load_config
from moltbot_gw.service import GatewayService

service = GatewayService(load_config(sys.argv[1]), reactor,
                         endpoint=TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
service.startService()

def done(_):
    print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
    service.stopService().addBoth(lambda _: reactor.stop())

service.when_listening().addBoth(done)
reactor.run()
"""


@pytest_twisted.ensureDeferred
async def test_an_idle_quickstart_gateway_has_not_imported_mcp_nor_the_html_converter(tmp_path):
    out, err, code = await utils.getProcessOutputAndValue(
        sys.executable, ["-c", START_AND_LIST, str(QUICKSTART)],
        env={"MOLTBOT_STATE_DIR": str(tmp_path / "st"), "HOME": str(tmp_path),
             "PATH": "/usr/bin:/bin"}, path=str(Path(__file__).resolve().parent.parent))
    assert code == 0, err
    loaded = set(json.loads(out.decode().strip().splitlines()[-1]))
    assert "twisted" in loaded and "moltbot_gw" in loaded
    assert sorted(loaded & {"mcp", "mcp_types", "bs4", "markdownify"}) == []
