"""Atomic file writes, their stale temp files, folder locks and hashing, shared by weight export, cache seeding,
checkpoints, run folders and predictions."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["LOCK_NAME", "FolderLock", "atomic_write", "atomic_write_text", "is_atomic_temp", "remove_stale_temp_files",
           "sha256_file", "sha256_file_once", "use_default_permissions"]

LOCK_NAME = ".gdzoo.lock"
# atomic_write's temp files: mkstemp(prefix=".<name>.", suffix=".tmp") adds 8 characters of [a-z0-9_]
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def use_default_permissions(path: str | os.PathLike) -> None:
    """Give a file or folder made by ``tempfile`` (mode 0600 / 0700) the mode a plain ``open`` / ``mkdir`` gives."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~umask)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    A crash leaves either the old file or the new one, never a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # named as _TEMP_NAME matches
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        use_default_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def is_atomic_temp(name: str) -> bool:
    """Whether a file name is one of :func:`atomic_write`'s temp files (``.<target>.<8 random characters>.tmp``)."""
    return _TEMP_NAME.fullmatch(name) is not None


def remove_stale_temp_files(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Delete the temp files that killed :func:`atomic_write` calls left in ``folder`` (and, ``recursive``, its
    sub-folders, except those with their own :data:`LOCK_NAME`: another run's folder); returns them.

    Only call it while holding ``folder``'s :class:`FolderLock` exclusively: a live writer's temp file looks the same.
    """
    folder = Path(folder)
    removed = []
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        if entry.is_file() and not entry.is_symlink() and is_atomic_temp(entry.name):
            entry.unlink(missing_ok=True)
            removed.append(entry)
        elif recursive and entry.is_dir() and not entry.is_symlink() and not (entry / LOCK_NAME).exists():
            removed += remove_stale_temp_files(entry, recursive=True)
    return removed


class FolderLock:
    """An advisory lock on ``<folder>/.gdzoo.lock`` (POSIX ``lockf``): the kernel drops it when its process exits or is
    killed (SIGKILL too), so a lock file left behind never blocks. Unlike ``flock``, forked children (DataLoader
    workers) do not inherit it, so a killed run's orphaned workers never hold its folder.

    Within one process it does not exclude itself, and closing any other descriptor of the lock file would drop it:
    take one per folder and process.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, shared: bool = False) -> bool:
        """Take the lock without waiting (exclusive, or ``shared`` with other shared holders); False when another
        process holds it in a conflicting mode. Exclusive holders record their process id in the file."""
        fd = self._fd if self._fd is not None else os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.lockf(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:  # EAGAIN / EACCES: held elsewhere
            if self._fd is None:
                os.close(fd)
            return False
        self._fd = fd
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return True

    def holder(self) -> int | None:
        """The process id recorded by the last exclusive holder, when that process is still alive."""
        try:
            if self._fd is not None:  # read through our descriptor: closing another one would drop our lock
                text = os.pread(self._fd, 64, 0).decode()
            else:
                text = self.path.read_text()
            pid = int(text.split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except PermissionError:  # alive, another user's
            return pid
        except OSError:
            return None
        return pid

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would let two processes lock two different files)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.release()


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


# sha256_file_once's memory: (path, inode, size, mtime, ctime) -> hex digest.
_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}
# A file changed less than this long before it was hashed is hashed again next time: a second write within the
# filesystem's timestamp granularity could leave inode, size, mtime and ctime as they were ("racy git").
_RACY_NS = 2_000_000_000


def sha256_file_once(path: str | os.PathLike) -> str:
    """:func:`sha256_file`, computed once per process for a file that has not changed since (same inode, size,
    mtime and ctime), so that resolving the same weights twice in one command reads them once.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "w"; _ = f.write_bytes(b"abc")
        >>> sha256_file_once(f) == sha256_file(f) == hashlib.sha256(b"abc").hexdigest()
        True
    """
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        digest = sha256_file(path)
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _RACY_NS:
            _DIGESTS[key] = digest
    return digest


sha256_file_once.cache_clear = _DIGESTS.clear  # type: ignore[attr-defined]  # as functools' caches: forget them all
