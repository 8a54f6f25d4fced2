"""Safe outputs: every file or folder xorsparse writes goes through here.

- `check_output` refuses, with a one-line `OutputError` naming the user's path, an output
  that is the same file as an input (symlinks and hard links resolved: device and inode
  compared), a device, FIFO or socket, a directory where a file is wanted, a symlink
  (unless forced: then the file it points to is written), and an existing output (unless
  forced). A folder output also may not contain an input.
- `atomic_file` / `atomic_dir` write into a temporary name next to the output and rename it
  into place, so the output is never half-written. Files get the usual mode (0666 minus the
  umask). The temporary names carry the writer's host and pid
  (`.tmp-xs-HOST-PID-TOKEN-NAME`): SIGTERM and SIGHUP remove them before the process dies,
  and the next write into the same folder removes those whose process no longer runs (a
  SIGKILLed writer's), with a warning on the "xorsparse" logger.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import threading
import zlib
from typing import Iterable, Iterator

from ..errors import XorsparseError

log = logging.getLogger("xorsparse")

TMP_PREFIX = ".tmp-xs-"
_TMP_RE = re.compile(r"\.tmp-xs-(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-(?P<token>[0-9a-z]{8})-.+", re.S)
_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


class OutputError(XorsparseError):
    """An output that must not or cannot be written; the message names the user's path."""


def _host() -> str:
    return f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFFFFFF:08x}"


def temp_name(final_basename: str) -> str:
    token = "".join(secrets.choice("0123456789abcdefghijklmnopqrstuvwxyz") for _ in range(8))
    return f"{TMP_PREFIX}{_host()}-{os.getpid()}-{token}-{final_basename}"


def _stat(p: str, follow: bool) -> os.stat_result | None:
    try:
        return os.stat(p) if follow else os.lstat(p)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise OutputError(f"{p}: cannot write ({e.strerror})") from None


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return a.st_dev == b.st_dev and a.st_ino == b.st_ino


def is_inside(child: str, folder: str) -> bool:
    """Whether `child` is `folder` or below it, symlinks resolved."""
    c, f = os.path.realpath(child), os.path.realpath(folder)
    return c == f or c.startswith(f.rstrip(os.sep) + os.sep)


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), force: bool = False,
                 directory: bool = False) -> str:
    """Refuse unsafe outputs; returns the path to replace (a symlink's target when forced)."""
    p = os.fspath(path)
    if not p:
        raise OutputError("empty output path")
    target = p
    st = _stat(p, follow=False)
    if st is not None and stat.S_ISLNK(st.st_mode):
        if not force:
            raise OutputError(f"{p}: is a symbolic link; refusing to replace it (--force writes to the file "
                              "it points to)")
        target = os.path.realpath(p)
        st = _stat(target, follow=False)
    if st is not None:
        kind = stat.S_IFMT(st.st_mode)
        if kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise OutputError(f"{p}: is not a regular file (a device, FIFO or socket); refusing to write to it")
        if kind == stat.S_IFDIR and not directory:
            raise OutputError(f"{p}: is a directory")
        if kind == stat.S_IFREG and directory:
            raise OutputError(f"{p}: is a file, not a folder")
    for i in inputs:
        ist = _stat(os.fspath(i), follow=True)
        if ist is None:
            continue
        if st is not None and _same(ist, st):
            raise OutputError(f"{p}: is the same file as the input {os.fspath(i)}; refusing to overwrite it")
        if directory and is_inside(os.fspath(i), target):
            raise OutputError(f"{p}: holds the input {os.fspath(i)}; refusing to replace it")
    if st is not None and not force:
        raise OutputError(f"{p}: already exists (use --force to replace it)")
    parent = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(parent):
        raise OutputError(f"{p}: cannot write: folder {os.path.dirname(p) or parent} does not exist")
    return target


# ---------------------------------------------------------------------------------------
# Temporary names: registered while they exist, removed on SIGTERM/SIGHUP


_active: set[str] = set()
_lock = threading.Lock()
_previous: dict[int, object] = {}


def _remove(p: str) -> None:
    try:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            os.unlink(p)
    except FileNotFoundError:
        pass
    except OSError:
        pass


def _on_signal(signum, frame):  # pragma: no cover - exercised in a subprocess test
    for p in list(_active):
        _remove(p)
    _active.clear()
    prev = _previous.get(signum, signal.SIG_DFL)
    if callable(prev):
        prev(signum, frame)
        return
    if prev == signal.SIG_IGN:
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _register(p: str) -> None:
    with _lock:
        if not _active and threading.current_thread() is threading.main_thread():
            for s in _SIGNALS:
                try:
                    _previous[s] = signal.signal(s, _on_signal)
                except (ValueError, OSError):  # not the main thread of the main interpreter
                    pass
        _active.add(p)


def _unregister(p: str) -> None:
    with _lock:
        _active.discard(p)
        if not _active and _previous and threading.current_thread() is threading.main_thread():
            for s, h in _previous.items():
                try:
                    signal.signal(s, h)
                except (ValueError, OSError, TypeError):
                    pass
            _previous.clear()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


def clean_stale(folder: str | os.PathLike) -> list[str]:
    """Remove temporary outputs in `folder` left by writers of this host that no longer run."""
    folder = os.fspath(folder) or "."
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    host = _host()
    for n in names:
        m = _TMP_RE.fullmatch(n)
        if not m or m["host"] != host or _alive(int(m["pid"])):
            continue
        p = os.path.join(folder, n)
        _remove(p)
        if not os.path.lexists(p):
            removed.append(p)
            log.warning("removed %s, left by an interrupted write (process %s)", p, m["pid"])
    return removed


class _Writer:
    """A binary file whose write errors name the user's path, not the temporary one."""

    def __init__(self, f, user_path: str):
        self._f = f
        self.raw = f  # the temporary file itself, for writers that need seek (torch.save)
        self._user = user_path
        self.name = user_path

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            raise OutputError(f"{self._user}: cannot write ({e.strerror or e})") from None

    def flush(self) -> None:
        self._f.flush()

    def tell(self) -> int:
        return self._f.tell()

    def fileno(self) -> int:
        return self._f.fileno()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (),
                force: bool = True) -> Iterator[_Writer]:
    """Write `path` through a temporary file renamed into place once complete.

    force=True (the library default, like open(path, "w")) replaces an existing file and
    writes through a symlink; the command line passes --force here. Same-as-input, devices
    and directories are refused whatever force says.
    """
    user = os.fspath(path)
    target = check_output(user, inputs, force)
    folder = os.path.dirname(os.path.abspath(target))
    clean_stale(folder)
    tmp = os.path.join(folder, temp_name(os.path.basename(target)))
    _register(tmp)
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as e:
            raise OutputError(f"{user}: cannot write ({e.strerror})") from None
        with os.fdopen(fd, "wb") as f:
            yield _Writer(f, user)
            try:
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:
                raise OutputError(f"{user}: cannot write ({e.strerror})") from None
        check_output(user, inputs, force=True)  # nothing turned into a device or folder meanwhile
        try:
            os.replace(tmp, target)
        except OSError as e:
            raise OutputError(f"{user}: cannot write ({e.strerror})") from None
    except BaseException:
        _remove(tmp)
        raise
    finally:
        _unregister(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (),
               force: bool = True) -> Iterator[str]:
    """Build a folder under a temporary name and rename it into place once complete.

    Yields the temporary folder's path; write the folder's files into it (plain writes are
    fine: the folder is not visible under its final name until it is complete). An existing
    folder is replaced only with force, and never one that holds an input.
    """
    user = os.fspath(path)
    target = check_output(user, inputs, force, directory=True)
    parent = os.path.dirname(os.path.abspath(target))
    clean_stale(parent)
    tmp = os.path.join(parent, temp_name(os.path.basename(target.rstrip(os.sep))))
    old = None
    _register(tmp)
    try:
        try:
            os.mkdir(tmp, 0o777)
        except OSError as e:
            raise OutputError(f"{user}: cannot write ({e.strerror})") from None
        yield tmp
        check_output(user, inputs, force=True, directory=True)
        try:
            if os.path.isdir(target):
                old = os.path.join(parent, temp_name(os.path.basename(target.rstrip(os.sep))))
                _register(old)
                os.rename(target, old)
            os.rename(tmp, target)
        except OSError as e:
            if old is not None and not os.path.exists(target):
                os.rename(old, target)
            raise OutputError(f"{user}: cannot write ({e.strerror})") from None
    except BaseException:
        _remove(tmp)
        raise
    finally:
        _unregister(tmp)
        if old is not None:
            _remove(old)
            _unregister(old)


def write_bytes(path: str | os.PathLike, data: bytes, **kw) -> None:
    """Atomic write of a small file (reports, JSON)."""
    with atomic_file(path, **kw) as f:
        f.write(data)


__all__ = ["OutputError", "check_output", "is_inside", "atomic_file", "atomic_dir", "clean_stale", "write_bytes", "temp_name"]
