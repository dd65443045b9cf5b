"""Files written atomically, stale temp files cleaned up, OS errors told in one line.

    atomic_write(path, write_fn)      write_fn(tmp) then rename tmp onto path: path is either the
                                      old complete file or the new complete file, never half of one
    remove_stale_temps(dir, name)     delete '.<name>.*.tmp' left by a run that was killed mid-write
    with new_folder(path): ...        make path (and parents); removed again if the block fails
                                      while they are still empty
    describe_os_error(e, path)        'PATH: no space left on device' and the like
    with folder_lock(dir): ...        one run at a time per folder (FolderInUse for a second)
    Staged(dir)                       several files written to temps, moved in place together
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


def _check_replaceable(path):
    """Never replace a folder, a device, a pipe...: FileError unless path is absent or a file."""
    if path.exists() and not path.is_file():
        raise FileError(OSError(errno.EEXIST, "exists and is not a regular file"), path)


def _new_temp(path) -> Path:
    """An empty hidden temp '.<name>.<random>.tmp' next to path (the names remove_stale_temps
    knows)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def _move_into_place(tmp, path):
    """fsync tmp (on disk before the rename, so a crash cannot leave it empty), make it 0644
    (mkstemp creates 0600) and rename it onto path."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def atomic_write(path, write_fn):
    """Call write_fn(tmp) on a hidden temp file next to path, fsync it and rename it onto path.

    On any failure (an exception in write_fn, a full disk, Ctrl-C) the temp file and any folder
    made for it are removed and the previous file at path is left as it was. OS errors are raised
    as FileError naming path; other exceptions (a failed check in write_fn, ...) pass unchanged."""
    path = Path(path)
    _check_replaceable(path)
    made = _missing_dirs(path.parent)
    tmp, done = None, False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temp(path)
        write_fn(str(tmp))
        _move_into_place(tmp, path)
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


class FolderInUse(FileError):
    """Another process holds the folder's lock (folder_lock)."""

    def __init__(self, path):
        super().__init__(OSError(errno.EBUSY, "in use"), path)
        self.message = f"{path}: in use by another run (wait for it to finish)"


@contextmanager
def folder_lock(path):
    """Hold an exclusive flock on folder `path` for the block (a second holder gets FolderInUse
    at once). The lock is on the folder itself, so no lock file is left behind; the kernel
    releases it when the process ends, however it ends."""
    import fcntl
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise FileError(e, path) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUse(path) from None
        yield path
    finally:
        os.close(fd)


class Staged:
    """Files of one run written to hidden temps ('.<name>.<random>.tmp', the names
    remove_stale_temps knows) and moved into place together by commit(); close() without commit
    removes the temps, so a failed or interrupted run leaves the folder's previous files as they
    were.

        with Staged(folder) as st:
            st.write("student.net", write_net); ...; st.commit(order, first_remove=["verify.json"])
    """

    def __init__(self, folder):
        self.folder, self.temps = Path(folder), {}

    def path(self, name) -> Path:
        """The temp file standing for folder/name (created empty)."""
        if name not in self.temps:
            target = self.folder / name
            _check_replaceable(target)
            try:
                self.temps[name] = _new_temp(target)
            except OSError as e:
                raise FileError(e, target) from None
        return self.temps[name]

    def write(self, name, write_fn) -> Path:
        """write_fn(temp of name); an OSError is raised as FileError naming folder/name."""
        tmp = self.path(name)
        try:
            write_fn(tmp)
        except FileError:
            raise
        except OSError as e:
            raise FileError(e, self.folder / name) from None
        return tmp

    def commit(self, order, first_remove=()):
        """Remove the files `first_remove` (a stale verdict), then move the temps into place in
        `order` (names; the others after them), each fsync'ed first."""
        for name in first_remove:
            with suppress(FileNotFoundError):
                (self.folder / name).unlink()
        names = [n for n in order if n in self.temps] + [n for n in self.temps if n not in order]
        for name in names:
            try:
                _move_into_place(self.temps[name], self.folder / name)
            except OSError as e:
                raise FileError(e, self.folder / name) from None
            del self.temps[name]

    def close(self):
        for tmp in self.temps.values():
            with suppress(OSError):
                tmp.unlink()
        self.temps = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
