"""Files written atomically, stale temp files cleaned up, OS errors told in one line.

    atomic_write(path, write_fn)      write_fn(tmp) then rename tmp onto path: path is either the
                                      old complete file or the new complete file, never half of one
    remove_stale_temps(dir, name)     delete '.<name>.*.tmp' left by a run that was killed mid-write
    with new_folder(path): ...        make path (and parents); removed again if the block fails
                                      while they are still empty
    describe_os_error(e, path)        'PATH: no space left on device' and the like
"""
import errno
import glob
import os
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path

_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "is a directory",
    errno.EEXIST: "exists and is not a regular file",
    errno.ENOENT: "no such file or directory",
    errno.ENAMETOOLONG: "file name too long",
}


class FileError(OSError):
    """An OSError whose str() is one line naming the path, e.g. 'runs/x/student.pt: no space left
    on device'. errno and filename are kept."""

    def __init__(self, err: OSError, path):
        super().__init__(err.errno, err.strerror or str(err), str(path))
        self.message = describe_os_error(err, path)

    def __str__(self):
        return self.message


def _not_a_directory(path: Path):
    """The first ancestor of path (or path itself) that exists and is not a directory, else None."""
    for p in reversed([path, *path.parents]):
        if p.exists() and not p.is_dir():
            return p
        if not p.exists():
            return None
    return None


def describe_os_error(e: OSError, path=None) -> str:
    """One line 'PATH: cause' for an OSError; PATH is `path` when given (the file the user asked
    for, rather than a temp file), else the error's own filename."""
    if isinstance(e, FileError):
        return e.message
    path = Path(path) if path is not None else (Path(e.filename) if e.filename else None)
    blocker = _not_a_directory(path) if path is not None else None
    if e.errno in (errno.ENOTDIR, errno.EEXIST) and blocker is not None and blocker != path:
        cause = f"{blocker} is a file, not a directory"
    elif e.errno == errno.ENOTDIR:
        cause = "not a directory"
    else:
        cause = _CAUSES.get(e.errno) or (e.strerror or str(e) or type(e).__name__)
    cause = cause.splitlines()[0] if cause else type(e).__name__
    return f"{path}: {cause}" if path is not None else cause


def _missing_dirs(d: Path) -> list:
    """The ancestors of d (d included) that do not exist yet, deepest first."""
    missing = []
    while not d.exists() and d != d.parent:
        missing.append(d)
        d = d.parent
    return missing


def atomic_write(path, write_fn):
    """Call write_fn(tmp) on a hidden temp file next to path, fsync it and rename it onto path.

    On any failure (an exception in write_fn, a full disk, Ctrl-C) the temp file and any folder
    made for it are removed and the previous file at path is left as it was. OS errors are raised
    as FileError naming path; other exceptions (a failed check in write_fn, ...) pass unchanged."""
    path = Path(path)
    if path.exists() and not path.is_file():  # never replace a folder, a device, a pipe...
        raise FileError(OSError(errno.EEXIST, "exists and is not a regular file"), path)
    made = _missing_dirs(path.parent)
    tmp, done = None, False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write_fn(tmp)
        with open(tmp, "rb") as f:  # on disk before the rename, so a crash cannot leave it empty
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
        done = True
    except OSError as e:
        raise FileError(e, path) from None
    finally:
        if not done:
            if tmp is not None:
                with suppress(OSError):
                    os.remove(tmp)
            for d in made:  # deepest first; only the folders this call made, and only if empty
                with suppress(OSError):
                    d.rmdir()


def remove_stale_temps(directory, name) -> list:
    """Delete the hidden temp files '.<name>.*.tmp' that atomic_write leaves only when its process
    is killed (SIGKILL, power loss) mid-write. Call it when a run starts, while no other process
    writes `name` in `directory`. Returns the paths removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for p in directory.glob(f".{glob.escape(name)}.*.tmp"):
        with suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed


@contextmanager
def new_folder(path):
    """Create folder `path` (with its parents) for the block; if the block raises, remove the
    folders it created that are still empty, so a run that fails early leaves no empty folder."""
    path = Path(path)
    made = _missing_dirs(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileError(e, path) from None
    try:
        yield path
    except BaseException:
        for d in made:
            with suppress(OSError):
                d.rmdir()
        raise
