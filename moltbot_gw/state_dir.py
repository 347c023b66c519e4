"""The daemon's state dir: forced to mode 0700 at start, claimed by one gateway at a time
through ``<stateDir>/gateway.lock`` (an ``flock`` held for the daemon's life, its PID inside),
and the private directories and synced renames the stores make in it. The start-up part
runs before the reactor does; the stores call the rest from worker threads.
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Optional

from moltbot_gw.sessions.transcript import fsync_directory

LOCK_FILE_NAME = "gateway.lock"
PRIVATE_DIR_MODE = 0o700


class StateDirBusy(Exception):
    """Another live gateway holds the state dir's lock."""

    def __init__(self, state_dir: Path, pid: Optional[int]):
        who = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(f"another gateway ({who}) is using state dir {state_dir}; stop it "
                         "or give this one its own MOLTBOT_STATE_DIR")
        self.pid = pid


def prepare_state_dir(state_dir: Path) -> None:
    """Create the state dir if needed and make it private (0700): it holds the token and
    every transcript."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    os.chmod(state_dir, PRIVATE_DIR_MODE)


def make_private_dirs(base: Path, *parts: str) -> Path:
    """Ensure ``base/parts...`` exist; each directory created here gets mode 0700.

    (``os.makedirs`` applies its mode to the leaf only, and the umask may narrow it.)
    """
    if not base.is_dir():
        os.makedirs(base, PRIVATE_DIR_MODE, exist_ok=True)
        os.chmod(base, PRIVATE_DIR_MODE)
    path = base
    for part in parts:
        path = path / part
        try:
            os.mkdir(path, PRIVATE_DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(path, PRIVATE_DIR_MODE)
        fsync_directory(path.parent)
    return path


def rename_if_present(source: Path, target: Path) -> bool:
    """``os.replace`` that tells whether ``source`` was there; the rename is synced."""
    try:
        os.replace(source, target)
    except FileNotFoundError:
        return False
    fsync_directory(source.parent)
    return True


class StateDirLock:
    """The lock of one state dir, held from ``acquire`` until the process ends (or
    ``release``). The kernel drops an ``flock`` with its last descriptor, so a killed
    gateway never leaves a stale lock behind."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd: Optional[int] = fd

    @classmethod
    def acquire(cls, state_dir: Path) -> "StateDirLock":
        path = state_dir / LOCK_FILE_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            pid = _pid_in(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StateDirBusy(state_dir, pid) from None
            raise
        lock = cls(path, fd)
        lock.write_pid()
        return lock

    def write_pid(self) -> None:
        """Record this process's PID (again after twistd has forked into the background)."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode("ascii"), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _pid_in(fd: int) -> Optional[int]:
    try:
        return int(os.pread(fd, 32, 0).decode("ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
