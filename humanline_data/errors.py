"""Errors that reach the user as one line (``error: <message>``) and a non-zero exit code.

Every stage raises a subclass of :class:`HumanlineError` for bad input; the CLI catches it,
prints ``str(err)`` on one line to stderr and exits with status 2. Nothing is written when one
is raised, because versions are only made visible by the final rename in ``store``.
"""

import contextlib
import errno
import os
import re
import sys
from typing import Iterator

import click


class HumanlineError(Exception):
    """Base class: a problem with the user's input, explained in one line."""

    def __str__(self) -> str:  # keep it to one line whatever the message holds
        return " ".join(super().__str__().split())


class SchemaError(HumanlineError):
    """A table is missing a column, has a wrong dtype, or holds a bad value."""


class InputFormatError(HumanlineError):
    """A source file cannot be parsed (malformed JSON, unknown format, ...)."""


class CorruptVersionError(HumanlineError):
    """A version on disk does not match its manifest (checksum, truncation, missing part)."""


class WrongKindError(HumanlineError):
    """A stage got a version of a kind it cannot consume."""


class ModelNotFoundError(HumanlineError):
    """A model name or path does not resolve to a usable model folder."""


def os_reason(exc: BaseException) -> str:
    """The OS's words and code for an OSError (``No space left on device, ENOSPC``), else its first line."""
    number = getattr(exc, "errno", None)
    if isinstance(number, int) and number > 0:
        return f"{os.strerror(number)}, {errno.errorcode.get(number, number)}"
    return (getattr(exc, "strerror", None) or str(exc).strip() or type(exc).__name__).splitlines()[0]


@contextlib.contextmanager
def os_errors(path: str | os.PathLike, doing: str = "cannot write", error: type = HumanlineError) -> Iterator[None]:
    """Turn an OSError raised inside (a full disk, an I/O error, no permission; pyarrow's I/O
    errors included, and the ``(os error N)`` that Rust-backed libraries such as safetensors
    raise as their own type) into ``error`` saying ``<path>: <doing> (<OS reason>)``."""
    try:
        yield
    except OSError as exc:
        raise error(f"{path}: {doing} ({os_reason(exc)})") from None
    except Exception as exc:
        rust = _RUST_OS_ERROR.search(str(exc))
        if rust is None:
            raise
        raise error(f"{path}: {doing} ({os_reason(OSError(int(rust.group(1)), ''))})") from None


_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


class OneLineErrorGroup(click.Group):
    """A click group (both command-line tools use it) that turns a :class:`HumanlineError` into
    ``error: <one line>`` on stderr and exit status 2, and a usage error into one ``error:``
    line with click's exit status (click's own would print three lines)."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as done:  # --help, --version
            sys.exit(done.exit_code)
        except click.ClickException as err:
            click.echo(f"error: {' '.join(err.format_message().split())}", err=True)
            sys.exit(err.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(0)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HumanlineError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)
