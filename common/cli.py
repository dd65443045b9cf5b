"""Conventions shared by every command line.

Exit codes: 0 done; 1 the command ran but its check failed (nothing was put in place);
2 bad input: a flag, a file, a field, the machine (no GPU, too little memory) or the disk
(read-only, not a directory, full, a folder in use by another run); 130 interrupted (Ctrl-C).
Errors are one line on stderr, 'error: <what>: <why>', naming the flag, file or field.

    p.add_argument("--epochs", type=positive_int)        # argparse reports bad values (exit 2)
    p.add_argument("--device", type=device_arg, default="auto", metavar="{auto,cpu,cuda}")
    check_writable_dir(args.run, "--run")                # before any work; creates nothing
    fail("--inputs: wrong layout")                       # prints 'error: ...', exits 2
    return run_guarded(lambda: work(args), MyError)      # in main(): known errors -> one line, 2
"""
import argparse
import json
import os
import sys
from pathlib import Path

from .files import describe_os_error

OK, CHECK_FAILED, BAD_INPUT, INTERRUPTED = 0, 1, 2, 130
DEVICES = ("auto", "cpu", "cuda")


class UsageError(ValueError):
    """Bad input found after parsing (flags that cannot work together, a bad field, ...)."""


class Exit(SystemExit):
    """SystemExit with an exit code and a one-line message: str(e) is the message, e.code the
    code, so an uncaught one exits with that code (its message was already printed)."""

    def __init__(self, message, code=BAD_INPUT):
        super().__init__(code)
        self.message = message

    def __str__(self):
        return self.message


def one_line(e) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    if isinstance(e, OSError):
        return describe_os_error(e)
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def fail(message, code=BAD_INPUT):
    """Print 'error: <first line of message>' on stderr and exit with `code` (raises Exit)."""
    if isinstance(message, BaseException):
        line = one_line(message)
    else:
        line = (str(message).strip().splitlines() or ["failed"])[0]
    print(f"error: {line}", file=sys.stderr)
    raise Exit(line, code)


def run_guarded(fn, *errors):
    """Return fn()'s exit code (0 for None); UsageError, OSError and the given error types become
    one line on stderr and exit code 2; Ctrl-C (KeyboardInterrupt) one line and 130."""
    try:
        code = fn()
    except (UsageError, OSError, *errors) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        return INTERRUPTED
    return OK if code is None else code


# ---- argparse types: a bad value is reported by argparse as 'argument --x: ...', exit 2 ---------

def positive_int(text) -> int:
    """An integer >= 1."""
    return _checked(int, text, lambda v: v >= 1, "an integer >= 1")


def non_negative_int(text) -> int:
    """An integer >= 0."""
    return _checked(int, text, lambda v: v >= 0, "an integer >= 0")


def positive_float(text) -> float:
    """A finite number > 0."""
    return _checked(float, text, lambda v: 0 < v < float("inf"), "a number > 0")


def non_negative_float(text) -> float:
    """A finite number >= 0."""
    return _checked(float, text, lambda v: 0 <= v < float("inf"), "a number >= 0")


def unit_float(text) -> float:
    """A number in [0, 1] (NaN refused)."""
    return _checked(float, text, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def json_object(text) -> dict:
    """A JSON object, e.g. '{"channels": [8, 16]}'."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object {{...}}, got {text!r}")
    return value


def device_arg(text) -> str:
    """'auto', 'cpu' or 'cuda'; 'cuda' only when PyTorch sees a GPU."""
    if text not in DEVICES:
        raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from "
                                         f"{', '.join(DEVICES)})")
    if text == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError("cuda requested but CUDA is not available on this "
                                             "machine (use cpu or auto)")
    return text


def _checked(cast, text, ok, what):
    try:
        value = cast(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


# ---- output folders ----------------------------------------------------------------------------

def check_writable_dir(path, flag="--run", shown=None):
    """Raise UsageError, one line '<flag> <shown>: <why>', unless the folder `path` exists and is
    writable or can be created; `shown` is what the user gave (default: path; an exporter checks
    the folder of its --out file). Creates nothing, so a failed command leaves no empty folder."""
    path = Path(path)
    shown = path if shown is None else shown
    p = path
    while not p.exists() and p != p.parent:  # the nearest ancestor that exists
        p = p.parent
    if p.is_file():
        raise UsageError(f"{flag} {shown}: {p} is a file, not a folder")
    if not p.is_dir():
        raise UsageError(f"{flag} {shown}: {p} is not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        where = "on a read-only file system" if _read_only_fs(p) else "not writable"
        raise UsageError(f"{flag} {shown}: {p} is {where}")


def _read_only_fs(p) -> bool:
    try:
        return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def load_npy(path, flag, error=UsageError):
    """One array from the .npy file given by `flag` (not an .npz archive, no pickled objects);
    `error` (a UsageError) with one line naming flag and file otherwise."""
    import numpy as np
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise error(f"{flag} {path}: cannot read as .npy ({type(e).__name__})") from None
    if not isinstance(a, np.ndarray):  # np.load gives an NpzFile for an .npz archive
        a.close()
        raise error(f"{flag} {path}: an .npz archive; expected one .npy array")
    return a
