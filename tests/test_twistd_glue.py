"""The twistd plugin's glue after issue 14: the gateway listens through the endpoint's public
API (a port that is taken still ends the daemon with exit status 1), and ``--log-format json``
chooses twistd's ``--logger`` (twisted.logger's ``FileLogObserver`` with a JSON formatter)."""
from __future__ import annotations

import io
import json
import socket
import subprocess

from twisted.logger import LogLevel

from moltbot_gw.json_log import json_file_log_observer, json_log_line

from .test_daemon import TWISTD, env  # noqa: F401  (env is a fixture)


def test_a_taken_port_ends_the_daemon_with_exit_status_1(tmp_path, env):  # noqa: F811
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(TWISTD + ["-n", "--pidfile=", "moltbot-gw", "--port", str(port)],
                                env=env, cwd=tmp_path, capture_output=True, text=True,
                                timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"Cannot listen on 127.0.0.1:{port}" in output
    assert "listening on" not in output


def test_log_format_json_and_twistds_logger_cannot_both_be_given(tmp_path, env):  # noqa: F811
    result = subprocess.run(TWISTD + ["-n", "--pidfile=", "--logger", "some.observer",
                                      "moltbot-gw", "--log-format", "json"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "--log-format json and twistd's --logger" in result.stdout + result.stderr


def test_every_event_is_one_json_line_with_its_formatted_text():
    out = io.StringIO()
    observe = json_file_log_observer(out)
    observe({"log_format": "served {n} request(s)", "n": 3, "log_level": LogLevel.info,
             "log_namespace": "moltbot_gw.test", "log_time": 1.0})
    observe({"log_format": "broken {", "log_level": LogLevel.warn, "log_time": 2.0})
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["text"] == "served 3 request(s)" and first["n"] == 3
    assert first["log_namespace"] == "moltbot_gw.test"
    assert "Unable to format event" in second["text"]      # kept, not lost
    assert second["log_format"] == "broken {{"
    assert json_log_line({"log_format": "x", "log_time": 0.0}).endswith("}\n")
