"""Argument types shared by the package's command lines.

Each type turns one command-line string into a value, or raises ``argparse.ArgumentTypeError``,
which argparse reports as ``prog: error: argument --name: <why>`` (after a usage line) with exit
status 2. The checks run while the arguments are parsed, so a bad value is refused before a
command loads, trains or writes anything.

    parser.add_argument("--limit", type=positive_int)
    parser.add_argument("--out", type=output_file)
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


def _integer(text: str, minimum: int) -> int:
    """An integer >= ``minimum``, or an ArgumentTypeError saying what is allowed."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, not {text!r}")
    return value


def _finite(text: str, rule: str, ok) -> float:
    """A finite number for which ``ok(value)`` holds, or an ArgumentTypeError citing ``rule``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number{' ' + rule if rule else ''}, not {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (a count, a size, a number of steps)."""
    return _integer(text, 1)


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (a seed, a number of things to show)."""
    return _integer(text, 0)


def finite_float(text: str) -> float:
    """Any finite number; never NaN or infinity (the range is left to the caller's own checks)."""
    return _finite(text, "", lambda x: True)


def nonnegative_float(text: str) -> float:
    """A finite number >= 0 (a temperature, a noise factor); never NaN or infinity."""
    return _finite(text, ">= 0", lambda x: x >= 0)


def positive_fraction(text: str) -> float:
    """A finite number in (0, 1] (a nucleus-sampling threshold)."""
    return _finite(text, "in (0, 1]", lambda x: 0 < x <= 1)


def _writable_path(text: str, directory: bool) -> Path:
    """``text`` as a path that a file (or, with ``directory``, a directory) can be written to:
    if it exists it is of that kind and writable; else its nearest existing ancestor is a
    writable directory. Nothing is created."""
    path = expanded(text)
    kind = "directory" if directory else "file"
    if path.exists():
        if path.is_dir() != directory:
            raise argparse.ArgumentTypeError(f"{text} is a {'file' if directory else 'directory'}, not a {kind}")
        if not os.access(path, os.W_OK):
            raise argparse.ArgumentTypeError(f"{text} is not writable")
        return path
    ancestor = next(p for p in path.absolute().parents if p.exists())  # the root exists
    if not ancestor.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write the {kind} {text}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write the {kind} {text}: {ancestor} is not writable")
    return path


def expanded(text: str) -> Path:
    """``text`` as a path with ``~`` expanded; an empty string or an unknown ``~user`` is an
    ArgumentTypeError."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must be a path, not an empty string")
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r} holds a NUL character, which no path can")
    try:
        return Path(text).expanduser()
    except RuntimeError:  # "~nosuchuser": pathlib cannot expand it
        raise argparse.ArgumentTypeError(f"cannot expand {text}: no such user") from None


def existing_dir(text: str) -> Path:
    """A directory that exists (``~`` is expanded)."""
    path = expanded(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a directory" if path.exists() else f"{text} does not exist")
    return path


def output_file(text: str) -> Path:
    """A path a file can be written to (see ``_writable_path``); ``~`` is expanded."""
    return _writable_path(text, directory=False)


def output_dir(text: str) -> Path:
    """A path a directory can be made or written in (see ``_writable_path``); ``~`` is expanded."""
    return _writable_path(text, directory=True)


def one_line(message: object) -> str:
    """``message`` on one line (an error from a library may span several), for ``parser.error``."""
    return " ".join(str(message).split())


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message with text on it (a driver's error may add lines of
    detail), or its type's name when it has none."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
