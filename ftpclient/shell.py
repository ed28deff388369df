"""The interactive shell: ``ftp> `` with put, get, ls, cd, pwd, mkdir, rm, mv, help, quit.

A thin :class:`cmd.Cmd` over :class:`~ftpclient.client.Client`: each ``do_*``
docstring is its help; errors print one line and the shell goes on.  When
standard input is not a terminal, commands are read from it without a prompt,
so a script can pipe them in; the exit status then says whether all succeeded.
"""
from __future__ import annotations

import cmd
import shlex
import sys
from typing import IO, Any, Callable

from ftpserver.errors import FTPError

from .client import Client
from .listing import format_columns, format_long
from .progress import ProgressBar

__all__ = ["FTPShell", "run_shell"]


def _command(method: Callable[["FTPShell", list[str]], None]) -> Callable[["FTPShell", str], None]:
    """Wrap a ``do_*`` body: split its arguments and turn errors into one printed line."""
    def run(self: "FTPShell", line: str) -> None:
        try:
            method(self, shlex.split(line))
        except ValueError as error:
            self.fail(f"{method.__name__[3:]}: {error}")
        except FTPError as error:
            self.fail(str(error))
        except KeyboardInterrupt:
            self.fail("interrupted; run the same command again to resume")
    run.__name__, run.__doc__ = method.__name__, method.__doc__
    return run


class FTPShell(cmd.Cmd):
    """An FTP-like shell on one connection."""

    prompt = "ftp> "
    intro = 'Connected. Type "help" for commands, "quit" to leave.'

    def __init__(self, client: Client, stdin: IO[str] | None = None, stdout: IO[str] | None = None,
                 quiet: bool = False) -> None:
        super().__init__(stdin=stdin, stdout=stdout)
        self.client = client
        self.quiet = quiet
        self.failures = 0
        if stdin is not None:
            self.use_rawinput = False

    def fail(self, message: str) -> None:
        """Report a failed command in one line and count it."""
        self.failures += 1
        print(f"error: {message}", file=self.stdout)

    def say(self, text: str) -> None:
        print(text, file=self.stdout)

    def emptyline(self) -> bool:  # an empty line does nothing (cmd.Cmd would repeat the last command)
        return False

    def default(self, line: str) -> None:
        self.fail(f"unknown command {line.split()[0]!r}; type help")

    def _bar(self, label: str) -> ProgressBar:
        return ProgressBar(label, False if self.quiet else None)

    @_command
    def do_put(self, args: list[str]) -> None:
        """put LOCAL [REMOTE]: upload a file (resumes an interrupted upload)."""
        if not 1 <= len(args) <= 2:
            raise ValueError("usage: put LOCAL [REMOTE]")
        with self._bar(args[0]) as bar:
            result = self.client.put(args[0], args[1] if len(args) > 1 else None, progress=bar)
        self.say(f"{result.remote}: {result.size} bytes{' (already there)' if result.skipped else ''}")

    @_command
    def do_get(self, args: list[str]) -> None:
        """get REMOTE [LOCAL]: download a file (resumes an interrupted download)."""
        if not 1 <= len(args) <= 2:
            raise ValueError("usage: get REMOTE [LOCAL]")
        with self._bar(args[0]) as bar:
            result = self.client.get(args[0], args[1] if len(args) > 1 else None, progress=bar)
        self.say(f"{result.local}: {result.size} bytes{' (already there)' if result.skipped else ''}")

    @_command
    def do_ls(self, args: list[str]) -> None:
        """ls [-l] [REMOTE_DIR]: list a remote folder (-l: type, size, time)."""
        long = "-l" in args
        paths = [a for a in args if a != "-l"]
        entries = self.client.ls(paths[0] if paths else "")
        for line in format_long(entries) if long else format_columns(entries, 80):
            self.say(line)

    @_command
    def do_cd(self, args: list[str]) -> None:
        """cd [REMOTE_DIR]: change the remote folder (no argument: the root)."""
        self.client.cd(args[0] if args else "/")

    @_command
    def do_pwd(self, args: list[str]) -> None:
        """pwd: print the remote folder."""
        self.say(self.client.pwd())

    @_command
    def do_mkdir(self, args: list[str]) -> None:
        """mkdir REMOTE_DIR: create a remote folder."""
        if len(args) != 1:
            raise ValueError("usage: mkdir REMOTE_DIR")
        self.client.mkdir(args[0])

    @_command
    def do_rm(self, args: list[str]) -> None:
        """rm REMOTE: remove a remote file or empty folder."""
        if len(args) != 1:
            raise ValueError("usage: rm REMOTE")
        self.client.rm(args[0])

    @_command
    def do_mv(self, args: list[str]) -> None:
        """mv REMOTE NEW: rename a remote file or folder."""
        if len(args) != 2:
            raise ValueError("usage: mv REMOTE NEW")
        self.client.mv(args[0], args[1])

    def do_quit(self, line: str) -> bool:
        """quit: leave the shell."""
        return True

    do_exit = do_quit

    def do_EOF(self, line: str) -> bool:
        """Ctrl-D: leave the shell."""
        if self.use_rawinput:
            self.say("")
        return True

    def complete_cd(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        return self._complete_remote(text, dirs_only=True)

    def complete_get(self, text: str, *_: Any) -> list[str]:
        return self._complete_remote(text)

    complete_ls = complete_cd
    complete_rm = complete_mv = complete_get

    def _complete_remote(self, text: str, dirs_only: bool = False) -> list[str]:
        folder, _, stem = text.rpartition("/")
        try:
            entries = self.client.ls(folder + "/" if folder else "")
        except FTPError:
            return []
        prefix = folder + "/" if folder else ""
        return [prefix + e["name"] + ("/" if e["type"] == "dir" else "")
                for e in entries if e["name"].startswith(stem) and (e["type"] == "dir" or not dirs_only)]


def run_shell(client: Client, quiet: bool = False) -> int:
    """Run the shell on this process's terminal or piped input; return the exit status."""
    interactive = sys.stdin.isatty()
    shell = FTPShell(client, stdin=None if interactive else sys.stdin, quiet=quiet)
    if not interactive:
        shell.prompt = ""
        shell.intro = None
    try:
        shell.cmdloop()
    except KeyboardInterrupt:
        shell.say("")
    return 1 if shell.failures and not interactive else 0
