"""The command line's contract for mistakes: a user error is one clear line and exit status 2, a traceback only with
`--debug`; a bug keeps its traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mtpf.cli import run_reporting_user_errors
from mtpf.errors import MtpfError
from mtpf.release import ReleaseError
from tests.conftest import REPO_ROOT


def mtpf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mtpf", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )


def test_a_user_error_is_one_line_and_exit_2(tmp_path):
    result = mtpf("info", str(tmp_path / "no-release"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert error_lines == [
        f"mtpf info: error: {tmp_path / 'no-release' / 'backbone' / 'config.json'}: missing from the release.  "
        "(--debug shows the traceback)"
    ]
    debug = mtpf("info", str(tmp_path / "no-release"), "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ReleaseError" in debug.stderr


def test_train_mtpf_reports_a_bad_config_in_one_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("mode: [unclosed\n")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_mtpf.py"), str(config)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{config}: not a valid YAML config" in result.stderr


def test_every_error_class_is_an_mtpf_error_and_bugs_keep_their_traceback():
    assert issubclass(ReleaseError, MtpfError) and issubclass(ReleaseError, ValueError)

    def bug(argv):
        raise KeyError("a real bug")

    with pytest.raises(KeyError):
        run_reporting_user_errors("mtpf test", bug, [])
