"""Writes that a kill at any instant cannot half-do, and that never lose what was there before.

A file is written under a hidden name beside its final one and renamed onto it (`AtomicFile`, and
`write_file` for bytes in hand): every writer of files in the package goes through it. A folder `NAME` is
filled as `.NAME.tmp-<id>` (unfinished: always safe to delete), renamed to `.NAME.new` once
complete, then swapped in with two renames, `NAME` -> `.NAME.old` and `.NAME.new` -> `NAME`. The
entries of the old folder that the new one lacks (a training `checkpoint/`, the user's own files)
move back in, and `.NAME.old` is deleted (`replace_folder`). Every step is one rename, so after a
kill at any point:

- a reader finds a complete copy with `complete_folder` (`NAME`, else `.NAME.new`, else
  `.NAME.old`) without changing anything, since a training run may still be writing;
- the next writer finishes the swap where it stopped and deletes unfinished copies (`recover`).
"""
from __future__ import annotations

import errno
import glob
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Callable

# Less free space than this right after a write failed means the write failed because the disk is
# full: torch.save and safetensors report it as "unexpected pos ..." or a bare I/O error.
FULL_DISK_BYTES = 1 << 20


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}")


def temp_path(path: str | Path, suffix: str = "") -> Path:
    """A fresh hidden name beside `path` to write it under: `.NAME.tmp-<id>` (+ `suffix`, for writers that
    pick a format by the extension)."""
    return _sibling(Path(path), f"tmp-{uuid.uuid4().hex[:8]}{suffix}")


def check_target(path: str | Path) -> Path:
    """`path`, absolute, after refusing what cannot be replaced: the current directory or one of its
    parents (replacing "." would move the folder out from under the process), or a file."""
    resolved = Path(path).resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise ValueError(f"refusing to write into {str(path)!r} ({resolved}): it is the current directory or one of "
                         "its parents, whose contents would have to move aside; expected a folder of its own, "
                         "e.g. runs/agent")
    if resolved.exists() and not resolved.is_dir():
        raise ValueError(f"{path} is a file; expected a folder to write into")
    return resolved


def _disk_full(error: BaseException, where: Path) -> bool:
    if not isinstance(error, Exception):  # KeyboardInterrupt and the like
        return False
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(where).free < FULL_DISK_BYTES
    except OSError:
        return False


def _full_disk_error(target: Path, error: BaseException) -> OSError:
    return OSError(errno.ENOSPC, f"no space left on the device of {target} while writing it "
                                 f"({type(error).__name__}: {error}); the previous copy, if any, is kept: "
                                 "free some space and write it again")


class AtomicFile:
    """A file filled under `tmp`, a hidden name beside `path`, then moved onto `path` in one rename
    (`commit`) or deleted (`discard`): readers see the old file or the new one, never a part. `path` may
    change before `commit` (a video named after its episode's outcome). As a context manager it commits
    when the block ends cleanly and discards when it raises, naming a full disk as such."""

    def __init__(self, path: str | Path, suffix: str = "") -> None:
        self.path = Path(path)
        self.tmp = temp_path(self.path, suffix)

    def commit(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            if exc is not None:
                raise exc
            self.commit()
        except BaseException as error:
            full = _disk_full(error, self.path.parent)
            self.discard()
            if full:
                raise _full_disk_error(self.path, error) from error
            raise


def write_file(path: str | Path, data: str | bytes) -> Path:
    """Write `data` to `path` atomically (`AtomicFile`)."""
    with AtomicFile(path) as file:
        file.tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return file.path


def replace_folder(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Fill a fresh folder with `write(folder)` and swap it in for `path` (see the module doc).
    Entries of an existing `path` that the new folder lacks are kept; the others are replaced."""
    target = check_target(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    staging = temp_path(target)
    staging.mkdir()
    try:
        write(staging)
    except BaseException as error:
        full = _disk_full(error, target.parent)
        shutil.rmtree(staging, ignore_errors=True)
        if full:
            raise _full_disk_error(target, error) from error
        raise
    os.rename(staging, _sibling(target, "new"))
    recover(target)
    return Path(path)


def recover(path: str | Path) -> None:
    """Complete the swap of folder `path` that a killed writer left half-done, and delete the
    unfinished copies of `path` (a folder or a file) it left. Writers call it; a reader must not, as
    the writer may still be running."""
    path = Path(path).absolute()
    new, old = _sibling(path, "new"), _sibling(path, "old")
    pattern = glob.escape(f".{path.name}.")
    unfinished = list(path.parent.glob(pattern + "tmp-*"))
    replaced = list(path.parent.glob(pattern + "old-*"))  # vla-agents 0.1's name for the copy being replaced
    if replaced and not path.exists():
        # 0.1 was killed between its two renames: it set the old copy aside only once its new one (the
        # single .tmp-*, holding the folder's other entries too) was complete.
        os.rename(unfinished.pop() if len(unfinished) == 1 else replaced.pop(), path)
    for leftover in unfinished + replaced:
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
    if new.exists():
        if path.exists():
            if old.exists():
                _retire(old, path)
            os.rename(path, old)
        os.rename(new, path)
    if old.exists():
        _retire(old, path)


def _retire(old: Path, path: Path) -> None:
    """Move the entries of the replaced folder that the new one lacks into it, then delete the rest."""
    for entry in old.iterdir():
        if not os.path.lexists(path / entry.name):
            os.rename(entry, path / entry.name)
    shutil.rmtree(old)


def complete_folder(path: str | Path) -> Path:
    """Where a complete copy of folder `path` is, changing nothing: `path` itself, else the copy an
    interrupted swap left as `.NAME.new` (the newer) or `.NAME.old`. Warns when a swap was interrupted."""
    path = Path(path)
    leftovers = [p for p in (_sibling(path, "new"), _sibling(path, "old")) if p.is_dir()]
    found = path if path.is_dir() else next(iter(leftovers), path)
    if leftovers:
        warnings.warn(f"a save to {path} was interrupted and left {', '.join(p.name for p in leftovers)} beside it; "
                      f"reading {found}. The next save to {path.name} (or training into it) completes the swap.",
                      stacklevel=2)
    return found
