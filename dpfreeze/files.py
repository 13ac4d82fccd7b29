"""dpfreeze's own files (state, snapshots, reports, logs): they hold network configuration, so they are
private (0600, in 0700 directories), written atomically, and never read or written through a symlink."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path


def private_dir(path: Path) -> None:
    """Create `path` (and its parents) 0700 where missing; an existing one is left as it is."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)


def read_private(path: Path) -> bytes:
    """The file's bytes; a symlink in its place is refused (ELOOP), not followed."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def write_atomic(path: Path, data: bytes | Iterable[bytes], *, head: Callable[[], bytes] | None = None,
                 head_size: int = 0) -> None:
    """Write 0600 so that a crash leaves the old file or the new one, never a mix: a fresh temporary file
    (O_EXCL: never an existing file or link), fsync, rename over `path` (which replaces a link, never
    follows it), fsync of the directory.  `data` may come in pieces (a large file never whole in memory);
    `head()`, exactly `head_size` bytes, is asked for once they are all written and goes in front of
    them (a header that sums up the rest)."""
    directory = path.parent if str(path.parent) else Path(".")
    # A random name, not only the pid: a crash leaves its temporary file, and after a reboot the service
    # often gets the same pid again; O_EXCL would then refuse every save.
    tmp = directory / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.lseek(fd, head_size, os.SEEK_SET)
            for piece in [data] if isinstance(data, bytes) else data:
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view) :]
            if head is not None:
                first = head()
                if len(first) != head_size:
                    raise ValueError(f"a {len(first)}-byte head for a {head_size}-byte place")
                os.pwrite(fd, first, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
