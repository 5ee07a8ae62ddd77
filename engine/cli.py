"""What every command line of the project shares: help that shows defaults, and errors as one
clear line with a hint, exit status 2, and a traceback only with ``--debug``.

* :class:`Parser` -- an ``argparse.ArgumentParser`` whose help shows every option's default
  (:class:`HelpFormatter`), which adds ``--debug`` to itself and to its subcommands, and whose
  usage errors print ``PROG: error: MESSAGE`` plus a hint line (exit 2).
* :func:`guarded` -- wraps a ``main(argv)``: an exception becomes ``PROG: error: MESSAGE`` and a
  hint on stderr, exit 2; ``--debug`` anywhere on the command line lets the traceback through.
* :class:`CliError` -- raise it with a message and a hint for errors the user can fix.
"""
from __future__ import annotations

import argparse
import functools
import sys

EXIT_ERROR = 2  # bad arguments, bad input, a failed job: every error exits 2
DEBUG_HINT = "run again with --debug to see the traceback"


class CliError(Exception):
    """An error the user can act on: ``message`` (one line) and ``hint`` (what to do)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps multi-line descriptions as written (wraps one-paragraph ones) and appends ``(default: X)`` to every option help that does
    not already say its default. Flags (``store_true``) and options without a default value show
    none; their help says what happens without them."""

    def _fill_text(self, text, width, indent):
        if "\n" in text.strip():  # a docstring laid out by hand: as written
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)  # one paragraph: wrapped

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or "default" in text.lower():
            return text
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS \
                or isinstance(action, argparse._StoreTrueAction):
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text
        default = action.default
        if isinstance(default, (list, tuple)):
            default = " ".join(str(x) for x in default)
        return f"{text} (default: {str(default).replace('%', '%%')})"


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, debug: bool = True, **kw):
        kw.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kw)
        if debug:
            self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                              help="on an error, show the full traceback instead of one line")

    def error(self, message: str):
        hint = f"'{self.prog} --help' lists the arguments and their defaults"
        sys.stderr.write(f"{self.prog}: error: {message}\n  hint: {hint}\n")
        sys.exit(EXIT_ERROR)


def message_of(e: BaseException, prog: str = "") -> tuple[str, str]:
    """``(one-line message, hint)`` for an exception."""
    text = str(e).strip() or type(e).__name__
    lines = [ln for ln in text.splitlines() if ln.strip()]
    first, rest = lines[0], [ln.strip() for ln in lines[1:]]
    if first.endswith(":") and rest:  # "cannot start:\n  what is wrong\n  how to fix it"
        first, rest = f"{first} {rest[0]}", rest[1:]
    hint = getattr(e, "hint", None)
    if hint is None:
        hint = "; ".join(rest) if rest else None
    elif rest:
        first = first + " " + " ".join(rest)
    own = (type(e).__module__ or "").split(".")[0] in ("engine", "server", "export", "training")
    expected = own or isinstance(e, (OSError, ValueError, LookupError))
    if not expected:
        first = f"{type(e).__name__}: {first}"
    if isinstance(e, KeyError) and not own:
        first = f"missing key {text}"
    if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in first:
        first = f"{first}: {e.filename}"
    if hint is None:
        hint = f"'{prog} --help' explains the arguments" if expected and prog else DEBUG_HINT
    return first, hint


def report(prog: str, e: BaseException, stream=None) -> int:
    stream = stream or sys.stderr
    msg, hint = message_of(e, prog)
    stream.write(f"{prog}: error: {msg}\n  hint: {hint}\n")
    stream.flush()
    return EXIT_ERROR


def guarded(prog: str):
    """Decorator for ``main(argv=None) -> int``: errors become one line + hint, exit 2."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(argv=None):
            args = list(sys.argv[1:] if argv is None else argv)
            try:
                return fn(args)
            except SystemExit:
                raise
            except KeyboardInterrupt:
                sys.stderr.write(f"{prog}: interrupted\n")
                return 130
            except Exception as e:
                if "--debug" in args:
                    raise
                return report(prog, e)
        return wrapper

    return deco


LOG_LEVELS = ("debug", "info", "warning", "error")


def add_logging(ap: argparse.ArgumentParser, default: str = "info") -> None:
    """``--log-level`` (validated choices, any case) and ``--quiet`` (warnings and errors only)."""
    ap.add_argument("--log-level", default=default, type=str.lower, choices=LOG_LEVELS, metavar="LEVEL",
                    help=f"log detail: {', '.join(LOG_LEVELS)} (default: %(default)s)")
    ap.add_argument("--quiet", "-q", action="store_true",
                    help="only warnings and errors (same as --log-level warning); no live status line")


def log_level(a) -> int:
    import logging

    name = "warning" if getattr(a, "quiet", False) and a.log_level in ("debug", "info") else a.log_level
    return getattr(logging, name.upper())
