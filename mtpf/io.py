"""Atomic file and folder writes: readers never see a half-written result."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)
MANIFEST = ".mtpf-manifest.json"  # in every folder `atomic_directory` writes: the files mtpf put there


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `target` in one rename, on error it is removed.

    A run killed half-way leaves at most its staging folder (`.NAME.tmp-PID-*`) or, between the two renames of a
    replace, the old folder as `.NAME.old-PID`: the next write to the same target repairs both (see
    `recover_directory`). Callers decide beforehand whether `target` may be replaced at all.
    """
    target = recover_directory(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    staging.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; the result should look like any new folder
    try:
        yield staging
        write_manifest(staging)
        give_default_modes(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_directory(staging, target)


def files_below(folder: Path) -> list[str]:
    """Every file below `folder`, as sorted relative POSIX paths (the manifest itself left out)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir() and p.name != MANIFEST)


def write_manifest(folder: Path) -> None:
    (folder / MANIFEST).write_text(json.dumps({"files": files_below(folder)}, indent=1) + "\n", encoding="utf-8")


def foreign_files(folder: Path) -> list[str] | None:
    """Files in a folder mtpf wrote that its manifest does not list (someone else's); None without a manifest."""
    try:
        listed = set(json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [name for name in files_below(folder) if name not in listed]


def give_default_modes(folder: Path) -> None:
    """Every file 0666 and folder 0777 less the umask, as a plain write makes them; some writers (safetensors
    through a temporary file) leave 0600, so a shared release would be unreadable to other users."""
    umask = current_umask()
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def check_output_folder(
    output: str | os.PathLike, overwrite: bool, marker: str, kind: str, error: type[Exception] = ValueError
) -> Path:
    """Where a result folder (a release, an app) may be written: a new or empty folder, or — with `overwrite` — one
    of the same kind (it holds `marker`). A folder holding anything else is never replaced; refused before any work.
    """
    output = recover_directory(output)
    if not output.exists():
        return output
    if not output.is_dir():
        raise error(f"{output}: exists and is not a folder; choose another --output.")
    if not any(output.iterdir()):
        return output
    if not (output / marker).is_file():
        entries = sorted(entry.name for entry in output.iterdir())[:5]
        raise error(
            f"{output}: not empty and not {kind} (holds {entries}); refusing to replace it. "
            "Choose a new or empty folder."
        )
    if not overwrite:
        raise error(f"{output}: {kind} is already there; pass --overwrite to replace it.")
    foreign = foreign_files(output)
    if foreign is None:
        raise error(
            f"{output}: {kind} without mtpf's list of the files it wrote ({MANIFEST}), so --overwrite cannot "
            "tell your files from mtpf's; delete it yourself or choose another folder."
        )
    if foreign:
        raise error(
            f"{output}: holds files mtpf did not write ({foreign[:5]}); --overwrite would delete them. "
            "Move them away or choose another folder."
        )
    return output


def replace_directory(source: Path, target: Path) -> None:
    """Move `source` onto `target`, keeping the old `target` until the new one is in place."""
    backup = None
    if target.exists():
        backup = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(backup, ignore_errors=True)
        target.rename(backup)
    source.rename(target)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def recover_directory(target: str | os.PathLike) -> Path:
    """The absolute target, after repairing what killed writers of it left behind.

    `.NAME.old-PID` of a dead process is the previous folder, moved aside just before the new one was renamed in:
    put back when the target is missing, deleted when the new one made it. Staging folders of dead processes are
    deleted. Folders of live processes (a concurrent writer) are left alone.
    """
    target = Path(target).resolve()  # `.` and `..` have no name of their own to build sibling names from
    if target.parent == target:
        raise ValueError(f"{target}: cannot write a folder over the file-system root.")
    if not target.parent.is_dir():
        return target
    for leftover in sorted(target.parent.glob(f".{glob.escape(target.name)}.*-*")):
        kind, pid = _leftover_owner(leftover, target.name)
        if kind is None or _process_alive(pid):
            continue
        if kind == "old" and not target.exists():
            leftover.rename(target)
            logger.warning("%s: restored from %s (a replace was interrupted)", target, leftover.name)
        else:
            shutil.rmtree(leftover, ignore_errors=True)
            logger.warning("%s: removed %s left by an interrupted write", target.parent, leftover.name)
    return target


def _leftover_owner(path: Path, name: str) -> tuple[str | None, int]:
    """("tmp" | "old", pid) for `.NAME.tmp-PID-*` / `.NAME.old-PID`; (None, 0) for anything else."""
    rest = path.name[len(name) + 2 :]
    kind, _, tail = rest.partition("-")
    pid = tail.split("-")[0]
    if kind not in ("tmp", "old") or not pid.isdigit():
        return None, 0
    return kind, int(pid)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers are from an earlier, failed write in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes: what identifies weights and data (sizes and mtimes do not)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def update_json(path: str | os.PathLike, change: Callable[[dict], None]) -> dict:
    """Read a JSON file, let `change` edit the dict in place, write it back (sorted keys); return the dict."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return data


def read_json_lines(path: Path, error: type[Exception]) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) of each non-blank line of a JSON-lines file; bad JSON or bytes that are not
    UTF-8 raise `error` naming the file and line."""
    with utf8_errors_named(path, error), Path(path).open(encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                raise error(f"{path}:{number}: not valid JSON ({err.msg}).") from err


@contextlib.contextmanager
def utf8_errors_named(path: str | os.PathLike, error: type[Exception]) -> Iterator[None]:
    """Turn a UnicodeDecodeError while reading `path` into `error` naming the file and the first bad line."""
    try:
        yield
    except UnicodeDecodeError as err:
        line = first_non_utf8_line(Path(path))
        raise error(
            f"{path}:{line}: not UTF-8 text ({err.reason}); is this a binary or differently encoded file?"
        ) from err


def first_non_utf8_line(path: Path) -> int:
    """1-based number of the first line that is not valid UTF-8 (0 if every line is)."""
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 0
