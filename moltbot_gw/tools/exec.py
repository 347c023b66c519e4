"""The runtime tool (``group:runtime``): ``exec`` runs a command in the agent's workspace as a
child process (Twisted's process support, never blocking the reactor), in its own process
group killed whole at its timeout or on cancel, with a minimal environment holding no secret,
optionally under bubblewrap. ``tools.exec`` decides how much of a shell the model gets."""
from __future__ import annotations

import os
import shlex
import shutil
import signal
from pathlib import Path
from typing import Any, Mapping, Optional

from twisted.internet import defer, protocol, threads
from twisted.logger import Logger
from zope.interface import implementer

from .base import IServerTool, ToolContext, ToolError
from .workspace import confine, int_arg, known_args, string_arg, workspace_root

GROUP = "group:runtime"
SETSID = "/usr/bin/setsid"    # util-linux: the child leads its own session and group, same pid
CHILD_PATH = "/usr/local/bin:/usr/bin:/bin"
# Refused anywhere in an allowlist command: no pipes, lists, redirections or substitutions.
SHELL_SYNTAX = (";", "&", "|", "<", ">", "`", "$(", "\n", "\r")
CUT_MARK = "\n[... {n} characters cut ...]\n"
BWRAP_PACKAGE = "bubblewrap"

log = Logger()


class BwrapMissing(ValueError):
    """``tools.exec.sandbox`` is "bwrap" but no ``bwrap`` is on PATH: the gateway refuses to
    start (a ValueError is what the twistd plugin reports and exits 1 with)."""


def find_bwrap() -> str:
    """The absolute path of ``bwrap``; ``BwrapMissing`` naming the Debian package if absent.
    Called once when the tool catalogue is built, not per call."""
    found = shutil.which("bwrap")
    if found is None:
        raise BwrapMissing('tools.exec.sandbox is "bwrap" but the bwrap program is not on '
                           f'PATH: install the Debian package "{BWRAP_PACKAGE}" (apt-get '
                           f'install {BWRAP_PACKAGE}) or set tools.exec.sandbox to "none"')
    return found


def child_env(workspace: Path) -> dict[str, str]:
    """A fresh environment: nothing is inherited from the gateway, so no token, password or
    provider key can reach the command."""
    return {"PATH": CHILD_PATH, "HOME": str(workspace), "LANG": "C.UTF-8", "TERM": "dumb"}


def allowlisted_argv(command: str, allowlist: tuple[str, ...]) -> list[str]:
    """``command`` split with shell rules into an argv run without a shell; a ToolError when
    it holds shell syntax or its program is not in ``tools.exec.allowlist``. Does a PATH
    lookup (file I/O): call it in a worker thread."""
    for token in SHELL_SYNTAX:
        if token in command:
            raise ToolError(f"command: {token!r} is refused (security \"allowlist\" runs one "
                            "program without a shell: no pipes, lists, redirections or "
                            "substitutions)")
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise ToolError(f"command: cannot split it: {e}") from None
    if not argv:
        raise ToolError("command: must not be empty")
    program = argv[0]
    allowed = set(allowlist)
    # A name is looked up on the child's PATH; a path (say ./echo, a script the model wrote)
    # must itself be in the allowlist, as an absolute path.
    if "/" in program:
        resolved: Optional[str] = program if program in allowed else None
    else:
        resolved = shutil.which(program, path=CHILD_PATH) if program in allowed else None
    if resolved is None and program not in allowed:
        raise ToolError(f"command: program {program!r} is not in tools.exec.allowlist")
    if resolved is None or not os.access(resolved, os.X_OK):
        raise ToolError(f"command: program {program!r} not found")
    return [resolved, *argv[1:]]


def sandboxed(bwrap: str, argv: list[str], workspace: Path, cwd: Path) -> list[str]:
    """``argv`` under bubblewrap: read-only root, private /tmp, the workspace read-write, no
    network, its own PID namespace, killed when its parent (the gateway) dies."""
    ws = str(workspace)
    return [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--tmpfs", "/tmp", "--bind", ws, ws, "--chdir", str(cwd),
            "--unshare-net", "--unshare-pid", "--die-with-parent", "--new-session",
            "--", *argv]


class CappedOutput:
    """One output stream kept to its first and last bytes (memory stays bounded however
    much the command writes); ``text`` keeps at most ``max_chars`` characters, head and
    tail, the cut marked."""

    def __init__(self, max_chars: int):
        self.max_chars = max_chars
        self._keep = max_chars * 4    # bytes: a UTF-8 character is at most 4
        self._head = bytearray()
        self._tail = bytearray()
        self._dropped = False

    def add(self, data: bytes) -> None:
        room = self._keep - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if data:
            self._tail += data
            if len(self._tail) > self._keep:
                del self._tail[:len(self._tail) - self._keep]
                self._dropped = True

    def text(self) -> str:
        whole = (self._head + self._tail).decode("utf-8", errors="replace")
        if len(whole) <= self.max_chars and not self._dropped:
            return whole
        half = self.max_chars // 2
        head, tail = whole[:half], whole[-(self.max_chars - half):]
        cut = "some" if self._dropped else str(len(whole) - len(head) - len(tail))
        return head + CUT_MARK.format(n=cut) + tail


class ExecProcess(protocol.ProcessProtocol):
    """Collects one child's stdout and stderr and fires ``done`` with (exit code or None,
    signal or None) when it has ended."""

    def __init__(self, max_chars: int):
        self.stdout = CappedOutput(max_chars)
        self.stderr = CappedOutput(max_chars)
        # Cancelling ``done`` (the run was cancelled, timed out or its client left) kills.
        self.done: defer.Deferred = defer.Deferred(lambda _d: self.kill_group())
        self.ended = False

    def connectionMade(self) -> None:
        if self.transport is not None:
            self.transport.closeStdin()   # the command reads no input

    def outReceived(self, data: bytes) -> None:
        self.stdout.add(data)

    def errReceived(self, data: bytes) -> None:
        self.stderr.add(data)

    def processEnded(self, reason: Any) -> None:
        self.ended = True
        if not self.done.called:   # not after a cancel
            self.done.callback((reason.value.exitCode, reason.value.signal))

    def kill_group(self) -> None:
        """SIGKILL the child's whole process group (its pid is the group id: setsid)."""
        pid = self.transport.pid if self.transport is not None else None
        if self.ended or not pid:
            return
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def report(exit_code: Optional[int], stdout: str, stderr: str) -> str:
    return f"exit code {exit_code}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"


@implementer(IServerTool)
class ExecTool:
    """``exec``: one command per call, as ``tools.exec`` allows (``security`` "allowlist":
    one allowlisted program without a shell; "full": ``/bin/sh -c``), optionally under
    bubblewrap (``bwrap``: its absolute path, found when the catalogue was built)."""

    name = "exec"
    group = GROUP
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": "the command line to run"},
            "timeout": {"type": "integer", "minimum": 1,
                        "description": "seconds before the command is killed"},
            "cwd": {"type": "string",
                    "description": "working folder, relative to the workspace (default: the "
                                   "workspace)"},
        },
        "required": ["command"],
        "additionalProperties": False,
    }

    def __init__(self, settings: Any, bwrap: Optional[str] = None):
        self.settings = settings
        self.bwrap = bwrap
        shell = ("runs it with /bin/sh -c" if settings.security == "full" else
                 "runs one program without a shell (no pipes, ;, &&, redirections or "
                 "substitutions); allowed programs: " + (", ".join(settings.allowlist)
                                                         or "none"))
        self.description = (
            f"Run a command in the workspace and return its exit code, stdout and stderr; "
            f"{shell}. Default timeout {settings.timeoutSeconds} s (at most "
            f"{settings.maxTimeoutSeconds} s)" + ("; sandboxed: no network, only the "
                                                   "workspace is writable." if bwrap else "."))

    def call(self, arguments: Mapping[str, Any], context: ToolContext) -> Any:
        return defer.Deferred.fromCoroutine(self._call(dict(arguments), context))

    async def _call(self, arguments: dict[str, Any], context: ToolContext) -> str:
        known_args(arguments, self.parameters)
        command = string_arg(arguments, "command")
        timeout = int_arg(arguments, "timeout", 1) or self.settings.timeoutSeconds
        if timeout > self.settings.maxTimeoutSeconds:
            raise ToolError(f"timeout: at most {self.settings.maxTimeoutSeconds} "
                            "(tools.exec.maxTimeoutSeconds)")
        cwd_arg = string_arg(arguments, "cwd", ".")
        workspace, cwd, argv = await threads.deferToThread(self._prepare, context, command,
                                                           cwd_arg)
        if self.bwrap is not None:
            argv = sandboxed(self.bwrap, argv, workspace, cwd)
        process = ExecProcess(self.settings.maxOutputChars)
        reactor = context.reactor
        child = reactor.spawnProcess(process, SETSID, [SETSID, *argv],
                                     env=child_env(workspace), path=str(cwd))
        log.info("exec started pid={pid} agent={agent_id}", pid=child.pid,
                 agent_id=context.agent_id)
        timer = reactor.callLater(timeout, process.kill_group)
        try:
            exit_code, signum = await process.done
        finally:
            if timer.active():
                timer.cancel()
        text = report(exit_code, process.stdout.text(), process.stderr.text())
        if timer.called:
            raise ToolError(f"timed out after {timeout} s (killed)\n{text}")
        if exit_code != 0:
            if signum is not None:
                raise ToolError(f"killed by signal {signum}\n{text}")
            raise ToolError(text)
        return text

    def _prepare(self, context: ToolContext, command: str,
                 cwd_arg: str) -> tuple[Path, Path, list[str]]:
        """In a worker thread: the workspace (created if missing), the cwd inside it, the
        argv to run."""
        workspace = workspace_root(context)
        cwd = confine(workspace, cwd_arg, param="cwd")
        if not cwd.is_dir():
            raise ToolError(f"cwd: {cwd_arg!r} is not a folder in the workspace")
        if self.settings.security == "full":
            return workspace, cwd, ["/bin/sh", "-c", command]
        return workspace, cwd, allowlisted_argv(command, tuple(self.settings.allowlist))


def exec_tools(settings: Any) -> dict[str, Any]:
    """The ``group:runtime`` tools ``tools.exec`` offers: none under security "deny". Raises
    ``BwrapMissing`` when the sandbox is bwrap and bwrap is not installed."""
    if settings.security == "deny":
        return {}
    bwrap = find_bwrap() if settings.sandbox == "bwrap" else None
    tool = ExecTool(settings, bwrap)
    return {tool.name: tool}
