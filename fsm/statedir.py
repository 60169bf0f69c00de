"""The state directory and its files, trusted only as far as they prove they are ours.

Lock files and status snapshots are read by managers (which act on them: a lock names a worker
that may be ended) and by ``ibgw status``/``doctor``. Anyone able to write into the directory
could plant a symlink, a FIFO, a link to /dev/zero, or a gigabyte of nested JSON there, so:

- the directory is created 0700, and refused when it is a symlink, not a directory, owned by
  another user, or writable by group or others;
- files are opened with ``O_NOFOLLOW`` (and ``O_NONBLOCK``, so a FIFO cannot hang the open),
  must be regular files owned by us (or read by root) and not writable by others, and are read
  up to a small bound;
- files are written by a temp file and ``rename`` (which replaces a symlink, never follows it).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from pathlib import Path

from fsm.errors import UnsafeStateDir

__all__ = [
    "MAX_STATE_FILE_BYTES",
    "UntrustedFile",
    "check_owned",
    "ensure_state_dir",
    "file_slug",
    "read_bounded",
    "write_atomic",
]

MAX_STATE_FILE_BYTES = 64 * 1024
"""Lock records are ~200 bytes and status snapshots ~2 KiB: anything this big is not ours."""

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class UntrustedFile(Exception):
    """A state file that is not provably ours, or cannot be read: the message is one line."""


def file_slug(text: str) -> str:
    """``text`` as it may appear in a file name (``::1`` -> ``__1``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def check_owned(st: os.stat_result, what: str, *, allow_root_reader: bool) -> None:
    """Raise UntrustedFile unless ``st`` is owned by us and not writable by group or others.

    ``allow_root_reader``: root may read what a user wrote (``sudo ibgw doctor``), but a manager
    that acts on a file requires it to be its own."""
    me = os.geteuid()
    if st.st_uid != me and not (allow_root_reader and me == 0):
        raise UntrustedFile(f"{what} is owned by uid {st.st_uid}, not by this user (uid {me})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedFile(f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})")


def ensure_state_dir(path: Path, *, create: bool = True) -> bool:
    """Make sure ``path`` is a state directory we can trust; False if absent and not created.

    Created 0700 (its parents with the default mode). UnsafeStateDir, naming the rule broken,
    for a symlink, a non-directory, another owner, or a group/other-writable mode."""
    path = Path(path)
    if create:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise UnsafeStateDir(f"cannot create the state directory {path}: {exc.strerror}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if create:
            raise UnsafeStateDir(f"the state directory {path} vanished while being created") from None
        return False
    except OSError as exc:
        if path.is_symlink():  # O_NOFOLLOW|O_DIRECTORY on a link: ELOOP or ENOTDIR, by system
            why = "is a symbolic link"
        elif exc.errno == errno.ENOTDIR:
            why = "is not a directory"
        else:
            why = f"cannot be opened ({exc.strerror})"
        raise UnsafeStateDir(f"the state directory {path} {why}; refusing to use it") from None
    try:
        check_owned(os.fstat(fd), f"the state directory {path}", allow_root_reader=not create)
    except UntrustedFile as exc:
        raise UnsafeStateDir(f"{exc}; refusing to use it") from None
    finally:
        os.close(fd)
    return True


def read_bounded(path: Path, limit: int = MAX_STATE_FILE_BYTES) -> bytes | None:
    """The bytes of the regular file at ``path``, or None if there is no file.

    UntrustedFile (one line) for a symlink, a FIFO/device/directory, a file not ours, one
    writable by others, or one larger than ``limit``. Never blocks: opened O_NONBLOCK."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UntrustedFile(f"{path} is a symbolic link") from None
        raise UntrustedFile(f"{path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UntrustedFile(f"{path} is not a regular file")
        check_owned(st, str(path), allow_root_reader=True)
        if st.st_size > limit:
            raise UntrustedFile(f"{path} is {st.st_size} bytes, over the {limit}-byte bound")
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > limit:
            raise UntrustedFile(f"{path} holds over {limit} bytes")
        return data
    except OSError as exc:
        raise UntrustedFile(f"{path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (mode 0600) by temp file + rename: readers never see half a
    file, and a symlink planted at ``path`` is replaced, never followed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
