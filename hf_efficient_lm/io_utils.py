"""Atomic writes: a reader never sees a half-written file or folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (``/proc/self/status`` on Linux)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: the classic swap (briefly process-wide)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike, *, replace: bool = False) -> Path:
    """Raise ``PermissionError`` naming ``path`` unless it can be written (created if missing) -- before any expensive
    work whose result would have nowhere to go. ``replace=True``: ``path`` is replaced as a whole (``atomic_dir`` /
    ``atomic_file``), so its parent must be writable. Returns the existing folder that was probed."""
    path = Path(path).expanduser()
    probe = path.parent if replace else path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise NotADirectoryError(f"cannot write to {path}: {probe} is a file, not a folder")
    try:
        tempfile.TemporaryDirectory(prefix=".hfelm-write-probe-", dir=probe).cleanup()
    except OSError as error:
        raise PermissionError(f"cannot write to {path}: {probe} is not writable ({error.strerror or error})") from None
    return probe


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temp file beside ``path``; on clean exit fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would (or keep the replaced file's mode)
        permissions = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~current_umask()
        os.chmod(tmp, permissions)
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield an empty temp folder beside ``path``; on clean exit it replaces ``path``.

    With ``overwrite=False`` an existing non-empty ``path`` is an error. On failure the temp folder is removed and
    ``path`` is left exactly as it was.
    """
    path = Path(path)
    aside = [] if path.exists() else sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if aside:  # a process killed between the two renames below left the old folder aside: restore it
        os.replace(aside[-1], path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    if not overwrite and path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} is not empty; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700: honour the umask like mkdir does
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # (the destination was gone, the old copy left hidden aside)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_figure(figure, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """Write a matplotlib figure atomically (the format follows the suffix, e.g. ``.png``)."""
    path = Path(path)
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    with atomic_file(path) as handle:
        figure.savefig(handle, **savefig_kwargs)
    return path
