"""Issue 13 item 10 (daemon files): the state dir is forced to 0700, the token file is
created exclusively (0600) and a symlinked one is refused, and two daemons on one state dir
do not both run: the second exits 1 naming the first's PID. Real ``twistd`` daemons."""
from __future__ import annotations

import os
import signal
import stat
import subprocess

import pytest

from moltbot_gw.auth import UnsafeTokenFile, load_or_create_token, read_token
from moltbot_gw.state_dir import StateDirBusy, StateDirLock

from .test_daemon import CLI, TWISTD, Daemon, env  # noqa: F401


def second_daemon(env, cwd):
    return subprocess.run(TWISTD + ["-n", "--pidfile=", "moltbot-gw", "--port", "0"],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_a_second_daemon_on_the_same_state_dir_refuses_to_start_naming_the_first(
        tmp_path, env):
    first = Daemon(["--port", "0"], env, tmp_path)
    try:
        first.wait_listening()
        lock_file = tmp_path / "state" / "gateway.lock"
        assert lock_file.read_text().strip() == str(first.proc.pid)
        second = second_daemon(env, tmp_path)
        assert second.returncode == 1
        assert (f"another gateway (pid {first.proc.pid}) is using state dir "
                f"{tmp_path / 'state'}") in second.stdout + second.stderr
        assert first.proc.poll() is None                 # the first one is untouched
    finally:
        assert first.stop() == 0


def test_a_killed_daemon_leaves_no_stale_lock(tmp_path, env):
    first = Daemon(["--port", "0"], env, tmp_path)
    first.wait_listening()
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=20)
    again = Daemon(["--port", "0"], env, tmp_path)
    try:
        again.wait_listening()
    finally:
        assert again.stop() == 0


def test_the_daemon_makes_the_state_dir_private_and_the_token_0600(tmp_path, env):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    daemon = Daemon(["--port", "0"], env, tmp_path)
    try:
        daemon.wait_listening()
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        assert stat.S_IMODE((state / "gateway.token").stat().st_mode) == 0o600
        assert [p.name for p in state.iterdir() if p.name.endswith(".tmp")] == []
    finally:
        assert daemon.stop() == 0


def test_a_symlinked_token_file_is_refused_by_daemon_and_cli(tmp_path, env):
    state = tmp_path / "state"
    state.mkdir()
    planted = tmp_path / "planted"
    planted.write_text("attacker-chosen-token\n")
    (state / "gateway.token").symlink_to(planted)
    result = second_daemon(env, tmp_path)
    assert result.returncode == 1
    assert "is a symbolic link; refusing" in result.stdout + result.stderr
    token = subprocess.run(CLI + ["token"], env=env, capture_output=True, text=True,
                           timeout=30)
    assert token.returncode == 1 and "attacker-chosen-token" not in token.stdout
    assert "symbolic link" in token.stderr
    health = subprocess.run(CLI + ["health", "--url", "http://127.0.0.1:9"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert health.returncode == 1 and "Traceback" not in health.stderr


def test_token_helpers_never_follow_a_link(tmp_path):
    planted = tmp_path / "planted"
    planted.write_text("attacker-chosen-token\n")
    (tmp_path / "gateway.token").symlink_to(planted)
    with pytest.raises(UnsafeTokenFile):
        read_token(tmp_path)
    with pytest.raises(UnsafeTokenFile):
        load_or_create_token(tmp_path)
    assert planted.read_text() == "attacker-chosen-token\n"


def test_a_new_token_is_created_0600_and_then_reused(tmp_path):
    token, created = load_or_create_token(tmp_path / "fresh")
    assert created and len(token) >= 32
    path = tmp_path / "fresh" / "gateway.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(tmp_path / "fresh") == (token, False)


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    lock = StateDirLock.acquire(tmp_path)
    try:
        with pytest.raises(StateDirBusy) as info:
            StateDirLock.acquire(tmp_path)
        assert info.value.pid == os.getpid()
    finally:
        lock.release()
    StateDirLock.acquire(tmp_path).release()             # free again once released
