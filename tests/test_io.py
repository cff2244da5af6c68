"""Atomic writes: what a killed writer leaves behind is repaired by the next write; errors name the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtpf.io import atomic_directory, recover_directory, utf8_errors_named


def dead_pid() -> int:
    """The id of a process that has exited (a killed writer)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def make_folder(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "file.txt").write_text(text)
    return path


def test_replace_killed_between_its_two_renames_is_restored(tmp_path):
    """The old folder was moved aside and the new one never arrived: the next write puts the old one back first."""
    pid = dead_pid()
    make_folder(tmp_path / f".rel.old-{pid}", "old release")
    assert recover_directory(tmp_path / "rel") == tmp_path / "rel"
    assert (tmp_path / "rel" / "file.txt").read_text() == "old release"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel"]


def test_replace_killed_after_the_new_folder_arrived_drops_the_old_one(tmp_path):
    pid = dead_pid()
    make_folder(tmp_path / "rel", "new release")
    make_folder(tmp_path / f".rel.old-{pid}", "old release")
    recover_directory(tmp_path / "rel")
    assert (tmp_path / "rel" / "file.txt").read_text() == "new release"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel"]


def test_staging_folders_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    make_folder(tmp_path / f".rel.tmp-{dead_pid()}-abc123", "half a release")
    live = make_folder(tmp_path / f".rel.tmp-{os.getppid()}-def456", "another process is writing")
    unrelated = make_folder(tmp_path / ".release.tmp-1-x", "another target's")
    with atomic_directory(tmp_path / "rel") as staging:
        (staging / "file.txt").write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["rel", live.name, unrelated.name])


def test_kill_during_the_replace_is_repaired_by_the_next_write(tmp_path, monkeypatch):
    """A deterministic 'kill' exactly between moving the old folder aside and renaming the new one in."""
    make_folder(tmp_path / "rel", "old release")
    real_rename = Path.rename

    def rename(self, target):
        if self.name.startswith(".rel.tmp-"):
            raise KeyboardInterrupt("simulated kill")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt), atomic_directory(tmp_path / "rel") as staging:
        (staging / "file.txt").write_text("new release")
    monkeypatch.undo()
    assert not (tmp_path / "rel").exists()  # the state a kill leaves: old folder aside, new one staged
    recover_directory(tmp_path / "rel")
    assert (tmp_path / "rel" / "file.txt").read_text() == "old release"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel"]


def test_dot_is_written_under_its_real_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with atomic_directory(".") as staging:
        (staging / "file.txt").write_text("x")
    assert (tmp_path / "here" / "file.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]


def test_files_get_default_modes(tmp_path):
    with atomic_directory(tmp_path / "rel") as staging:
        path = staging / "weights.safetensors"
        path.write_bytes(b"x")
        path.chmod(0o600)  # as safetensors' writer leaves it
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "rel" / "weights.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask


def test_non_utf8_bytes_are_named_by_line(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"anchor\tpositive\nfine\ttext\n\xff\xfe\x00garbage\tx\n")
    with pytest.raises(ValueError, match=r"pairs\.tsv:3: not UTF-8 text"), utf8_errors_named(path, ValueError):
        path.read_text(encoding="utf-8")


def test_overwrite_replaces_only_what_mtpf_wrote(tmp_path):
    """`--overwrite` of an app, export or release: mtpf's own files go, a folder holding anything else is refused
    (before any work) and the user's file survives; a folder without mtpf's manifest is never guessed at."""
    from mtpf.io import MANIFEST, atomic_directory, check_output_folder

    target = tmp_path / "app"
    with atomic_directory(target) as staging:
        (staging / "mtpf_app.json").write_text("{}")
        (staging / "sub").mkdir()
        (staging / "sub" / "weights.bin").write_text("w")
    assert json.loads((target / MANIFEST).read_text())["files"] == ["mtpf_app.json", "sub/weights.bin"]
    assert check_output_folder(target, True, "mtpf_app.json", "an app") == target  # only mtpf's files: replaceable
    (target / "my-notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files mtpf did not write \(\['my-notes.txt'\]\)"):
        check_output_folder(target, True, "mtpf_app.json", "an app")
    assert (target / "my-notes.txt").read_text() == "mine"
    (target / "my-notes.txt").unlink()
    (target / MANIFEST).unlink()  # written by an older mtpf, or by hand
    with pytest.raises(ValueError, match="cannot tell your files from mtpf's"):
        check_output_folder(target, True, "mtpf_app.json", "an app")
