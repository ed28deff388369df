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
from typing import IO, Callable

from ftpserver.errors import FTPError

from .cli import transfer
from .client import Client
from .listing import format_columns, format_long
from .names import shown

__all__ = ["FTPShell", "run_shell", "split_line"]

HISTORY = Path("~/.ftpclient_history")


def _command(method: Callable[["FTPShell", list[str]], None]) -> Callable[["FTPShell", str], None]:
    """Wrap a ``do_*`` body: split its arguments and turn errors into one printed line."""
    def run(self: "FTPShell", line: str) -> None:
        try:
            method(self, split_line(line))
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


def split_line(line: str) -> list[str]:
    """Split a command line as a POSIX shell does (quotes, backslashes).

    A quote left open after a folder's name (``cd "my dir/``) is closed, as
    completion leaves it so.  Raises ValueError for any other open quote, or a
    line ending in a lone backslash.
    """
    quote = _partial_word(line)[2] if line.endswith("/") else None
    return shlex.split(line + (quote or ""))


def _partial_word(line: str) -> tuple[list[str], str, str | None]:
    """Read a line being typed as shlex would: the words before the last, the last
    one so far (quotes and backslashes undone), and the quote left open in it."""
    words: list[str] = []
    value, quote, in_word = "", None, False
    i = 0
    while i < len(line):
        c = line[i]
        if quote is None and c in " \t":
            if in_word:
                words.append(value)
                value, in_word = "", False
        elif not in_word:
            in_word = True
            continue  # read the word's first character again, now inside it
        elif c == "\\" and quote != "'":
            following = line[i + 1:i + 2]
            if quote == '"' and following not in ('"', "\\"):
                value += c  # inside double quotes a backslash escapes only " and \
            else:
                value += following
                i += 1
        elif c == quote:
            quote = None
        elif quote is None and c in "'\"":
            quote = c
        else:
            value += c
        i += 1
    return words, value, quote


def _quoted(text: str, quote: str | None) -> str:
    """``text`` as it must be typed after an open ``quote`` (None: outside quotes)."""
    if quote == "'":
        return text.replace("'", "'\\''")
    if quote == '"':
        return text.replace("\\", "\\\\").replace('"', '\\"')
    return "".join("\\" + c if c in " \t'\"\\" else c for c in text)


def _completions(text: str, line: str, endidx: int, candidates: list[str]) -> list[str]:
    """What readline should put in place of ``text``: each candidate for the word
    being typed, the rest of it quoted as the word so far is (a backslash before a
    space, or inside the quote left open).  A single file is closed with its quote
    and a space, as bash does; a folder (ending in /) stays open to go on."""
    _, value, quote = _partial_word(line[:endidx])
    done = [text + _quoted(c[len(value):], quote) for c in candidates if c.startswith(value)]
    if len(done) == 1 and not done[0].endswith("/"):
        done[0] += (quote or "") + " "
    return done


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

    def _complete_remote(self, value: str, dirs_only: bool = False) -> list[str]:
        stem = value.rpartition("/")[2]
        try:
            entries = self.client.ls(value[:len(value) - len(stem)])  # "", "docs/" or "/"
        except FTPError:
            return []
        return [value + e["name"][len(stem):] + ("/" if e["type"] == "dir" else "")
                for e in entries if e["name"].startswith(stem) and (e["type"] == "dir" or not dirs_only)]

    @staticmethod
    def _complete_local(value: str, dirs_only: bool = False) -> list[str]:
        expanded = os.path.expanduser(value)  # the candidates keep the ~ as typed
        matches = sorted(glob.glob(glob.escape(expanded) + "*"))
        return [value + m[len(expanded):] + (os.sep if os.path.isdir(m) else "")
                for m in matches if os.path.isdir(m) or not dirs_only]

    def _complete(self, text: str, line: str, endidx: int, local: bool,
                  dirs_only: bool = False) -> list[str]:
        value = _partial_word(line[:endidx])[1]
        names = self._complete_local(value, dirs_only) if local else \
            self._complete_remote(value, dirs_only)
        return _completions(text, line, endidx, names)

    def complete_get(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        return self._complete(text, line, endidx, local=False)

    def complete_cd(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        return self._complete(text, line, endidx, local=False, dirs_only=True)

    def complete_put(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        # The first argument is local, a later one may be the remote destination.
        words = _partial_word(line[:endidx])[0]
        typed = [w for w in words[1:] if not w.startswith("-")]
        return self._complete(text, line, endidx, local=not typed)

    def complete_lcd(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        return self._complete(text, line, endidx, local=True, dirs_only=True)

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
