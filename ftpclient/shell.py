"""The interactive shell: ``ftp> `` with remote and local commands, help and completion.

A thin :class:`cmd.Cmd` over :class:`~ftpclient.client.Client`: each ``do_*``
docstring is its help; an error prints one line and the shell goes on; Ctrl-C
cancels the running transfer (which stays resumable) without leaving the shell;
Ctrl-D quits.  When standard input is not a terminal, commands are read from it
without a prompt, so a script can pipe them in; the exit status then says
whether all of them succeeded.
"""
from __future__ import annotations

import cmd
import glob
import inspect
import os
import shlex
import sys
from pathlib import Path
from typing import IO, Any, Callable

from ftpserver.errors import FTPError

from .cli import transfer
from .client import Client
from .listing import format_columns, format_long
from .names import shown

__all__ = ["FTPShell", "run_shell"]

HISTORY = Path("~/.ftpclient_history")


def _command(method: Callable[["FTPShell", list[str]], None]) -> Callable[["FTPShell", str], None]:
    """Wrap a ``do_*`` body: split its arguments and turn errors into one printed line."""
    def run(self: "FTPShell", line: str) -> None:
        try:
            method(self, shlex.split(line))
        except ValueError as error:
            self.fail(f"{method.__name__[3:]}: {error}")
        except FTPError as error:
            self.fail(str(error))
        except OSError as error:
            name = shown(str(error.filename)) if error.filename else ""
            self.fail(f"{name}: {error.strerror or error}".lstrip(": "))
        except KeyboardInterrupt:
            moving = method.__name__ in ("do_put", "do_get")
            self.fail("interrupted" + ("; run the same command again to resume" if moving else ""))
    run.__name__, run.__doc__ = method.__name__, method.__doc__
    return run


def _options(args: list[str], allowed: str) -> tuple[set[str], list[str]]:
    """Split ``-x`` style flags (among ``allowed``) from the other arguments."""
    flags = {a for a in args if a.startswith("-") and a != "-"}
    unknown = flags - set(allowed.split())
    if unknown:
        raise ValueError(f"unknown option {sorted(unknown)[0]}")
    return flags, [a for a in args if a not in flags]


class FTPShell(cmd.Cmd):
    """An FTP-like shell on one connection."""

    prompt = "ftp> "
    intro = 'Connected. Type "help" for commands, "help CMD" for one, "quit" to leave.'

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
        """Print one line of output."""
        print(text, file=self.stdout)

    def get_names(self) -> list[str]:
        return [name for name in super().get_names() if name != "do_EOF"]

    def do_help(self, arg: str) -> None:
        """help [CMD]: list the commands, or explain one."""
        method = getattr(self, "do_" + arg, None) if arg else None
        if method is not None and method.__doc__:
            self.say(inspect.cleandoc(method.__doc__))
        else:
            super().do_help(arg)

    def emptyline(self) -> bool:  # cmd.Cmd would repeat the last command
        return False

    def default(self, line: str) -> None:
        self.fail(f"unknown command {line.split()[0]!r}; type help")

    # -- transfers ----------------------------------------------------------

    def _transfer(self, args: list[str], upload: bool) -> None:
        flags, paths = _options(args, "-r --restart -v")
        if not paths:
            raise ValueError("usage: put [-r] [-v] [--restart] LOCAL... [REMOTE]" if upload else
                             "usage: get [-r] [-v] [--restart] REMOTE... [LOCAL]")
        if not transfer(self.client, paths, upload, recursive="-r" in flags,
                        restart="--restart" in flags, quiet=self.quiet, verbose="-v" in flags,
                        out=self.stdout):
            self.failures += 1

    @_command
    def do_put(self, args: list[str]) -> None:
        """put [-r] [-v] [--restart] LOCAL... [REMOTE]: upload files, patterns or (-r) folders.

        With one LOCAL, REMOTE is its new name or a folder to put it in; with
        several, the last argument is the remote folder.  An interrupted upload
        resumes when run again; --restart starts from zero; -v lists every
        file that failed."""
        self._transfer(args, upload=True)

    @_command
    def do_get(self, args: list[str]) -> None:
        """get [-r] [-v] [--restart] REMOTE... [LOCAL]: download files, patterns ('*.iso') or (-r) folders.

        With one REMOTE, LOCAL is its new name or a folder to put it in; with
        several, the last argument is the local folder.  An interrupted download
        resumes when run again; --restart starts from zero; -v lists every
        file that failed."""
        self._transfer(args, upload=False)

    # -- remote commands ------------------------------------------------------

    @_command
    def do_ls(self, args: list[str]) -> None:
        """ls [-l] [REMOTE_DIR]: list a remote folder (-l: type, size, modification time)."""
        flags, paths = _options(args, "-l")
        entries = self.client.ls(paths[0] if paths else "")
        for line in format_long(entries) if flags else format_columns(entries):
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

    # -- local commands -------------------------------------------------------

    @_command
    def do_lcd(self, args: list[str]) -> None:
        """lcd [LOCAL_DIR]: change the local folder (no argument: your home)."""
        os.chdir(os.path.expanduser(args[0] if args else "~"))
        self.say(shown(os.getcwd()))

    @_command
    def do_lpwd(self, args: list[str]) -> None:
        """lpwd: print the local folder."""
        self.say(shown(os.getcwd()))

    @_command
    def do_lls(self, args: list[str]) -> None:
        """lls [-l] [LOCAL_DIR]: list a local folder."""
        flags, paths = _options(args, "-l")
        folder = Path(os.path.expanduser(paths[0] if paths else "."))
        entries = []
        for child in sorted(folder.iterdir()):
            info = child.stat()
            entries.append({"name": child.name, "type": "dir" if child.is_dir() else "file",
                            "size": info.st_size if child.is_file() else 0, "mtime": info.st_mtime})
        for line in format_long(entries) if flags else format_columns(entries):
            self.say(line)

    # -- leaving ----------------------------------------------------------------

    def do_quit(self, line: str) -> bool:
        """quit: leave the shell (Ctrl-D too)."""
        return True

    do_exit = do_bye = do_quit

    def do_EOF(self, line: str) -> bool:
        """Ctrl-D: leave the shell."""
        if self.use_rawinput:
            self.say("")
        return True

    # -- completion -------------------------------------------------------------

    def _complete_remote(self, text: str, dirs_only: bool = False) -> list[str]:
        folder, _, stem = text.rpartition("/")
        try:
            entries = self.client.ls(folder + "/" if folder else "")
        except FTPError:
            return []
        prefix = folder + "/" if folder else ""
        return [prefix + e["name"] + ("/" if e["type"] == "dir" else "")
                for e in entries if e["name"].startswith(stem) and (e["type"] == "dir" or not dirs_only)]

    @staticmethod
    def _complete_local(text: str, dirs_only: bool = False) -> list[str]:
        matches = glob.glob(glob.escape(os.path.expanduser(text)) + "*")
        return [m + os.sep if os.path.isdir(m) else m
                for m in sorted(matches) if os.path.isdir(m) or not dirs_only]

    def complete_get(self, text: str, *_: Any) -> list[str]:
        return self._complete_remote(text)

    def complete_cd(self, text: str, *_: Any) -> list[str]:
        return self._complete_remote(text, dirs_only=True)

    def complete_put(self, text: str, line: str, *_: Any) -> list[str]:
        # The first argument is local, a later one may be the remote destination.
        args = [a for a in line.split()[1:] if not a.startswith("-")]
        typed = len(args) - (1 if text else 0)
        return self._complete_local(text) if typed == 0 else self._complete_remote(text)

    def complete_lcd(self, text: str, *_: Any) -> list[str]:
        return self._complete_local(text, dirs_only=True)

    complete_ls = complete_cd
    complete_rm = complete_mv = complete_get
    complete_lls = complete_lcd


def _readline_history() -> Callable[[], None]:
    """Load readline history if readline exists; return the function that saves it."""
    try:
        import readline
    except ImportError:
        return lambda: None
    path = HISTORY.expanduser()
    readline.set_completer_delims(" \t\n")
    try:
        readline.read_history_file(path)
    except OSError:
        pass

    def save() -> None:
        try:
            readline.set_history_length(1000)
            readline.write_history_file(path)
        except OSError:
            pass
    return save


def run_shell(client: Client, quiet: bool = False) -> int:
    """Run the shell on this terminal or on piped input; return the exit status."""
    interactive = sys.stdin.isatty()
    shell = FTPShell(client, stdin=None if interactive else sys.stdin, quiet=quiet)
    save_history = _readline_history() if interactive else (lambda: None)
    if not interactive:
        shell.prompt = ""
        shell.intro = None
    try:
        while True:
            try:
                shell.cmdloop()
                break
            except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh prompt, as in bash
                shell.say("^C")
                shell.intro = None
    finally:
        save_history()
    return 1 if shell.failures and not interactive else 0
