"""Put an exported file in place only when it passes its check (used by to_nir and to_onnx)."""
from train.checkpoint import atomic_write


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
