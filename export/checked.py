"""Put an exported file in place only when it passes its check, and the exporters' command-line
convention (used by to_nir and to_onnx): exit 0 written, 1 the check failed (nothing written),
2 bad input (flag, checkpoint, dataset, output path, disk), one line 'error: ...' on stderr."""
from pathlib import Path

from common.cli import CHECK_FAILED, UsageError, check_writable_dir, fail
from common.files import atomic_write, remove_stale_temps
from train.checkpoint import CheckpointError
from train.data import DataError


class MismatchError(RuntimeError):
    """The written file does not reproduce the model; it was not put in place."""


def write_checked(out, write, check, summary, log=print) -> dict:
    """write(tmp); report = check(tmp); rename tmp onto `out` only when report['ok'], else raise
    MismatchError(summary(report)). Logs the summary and returns the report."""
    report = {}

    def write_and_check(tmp):
        write(tmp)
        report.update(check(tmp))
        if not report["ok"]:
            raise MismatchError(summary(report))

    atomic_write(out, write_and_check)
    log(summary(report))
    log(f"wrote {out}")
    return report


def run_export(out, flag, work, errors=()):
    """An exporter's main body: check that `out` (given by `flag`) can be written before any work,
    drop temp files of an export that was killed, run work(); exits (common.cli.Exit) 1 on a
    failed check, 2 on bad input, with one line naming what is wrong."""
    out = Path(out)
    try:
        check_writable_dir(out.parent, flag, shown=out)
        if out.exists() and not out.is_file():
            raise UsageError(f"{flag} {out}: exists and is not a regular file")
        remove_stale_temps(out.parent, out.name)
        work()
    except MismatchError as e:
        fail(f"{out} not written: {e}", CHECK_FAILED)
    except (UsageError, CheckpointError, DataError, OSError, *errors) as e:
        fail(e)
