"""The transcript writer process (moltbot_gw.sessions.commit_child) with every file sync
logged: after each fsync of a transcript, its path is appended to the file named by
``$COMMIT_CHILD_FSYNC_LOG``, so a test can check a turn was synced before it was answered."""
from __future__ import annotations

import os
import sys

from moltbot_gw.sessions import commit_child, group_commit

real_sync = group_commit._DATASYNC


def logged_sync(fd: int) -> None:
    real_sync(fd)
    with open(os.environ["COMMIT_CHILD_FSYNC_LOG"], "a") as log:
        log.write(os.readlink(f"/proc/self/fd/{fd}") + "\n")


group_commit._DATASYNC = logged_sync

if __name__ == "__main__":
    sys.exit(commit_child.main())
