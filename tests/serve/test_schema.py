"""The contract is the schema: schemathesis (`--checks all`, bounded examples, a fixed seed) against a real server
finds no status code, content type or response shape that /openapi.json does not declare, and no 5xx."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.serve.test_server import KEY, Server


def test_schemathesis_finds_nothing_the_schema_does_not_declare(app, tmp_path):
    release, _ = app
    server = Server(release, "--api_key", KEY, log=tmp_path / "server.log")
    try:
        # the schema and its docs page follow the API's key rule
        assert httpx.get(f"{server.url}/openapi.json").status_code == 401
        assert httpx.get(f"{server.url}/docs").status_code == 401
        headers = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(f"{server.url}/docs", headers=headers).status_code == 200
        command = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "25",
            "--seed",
            "7",
            "-H",
            f"Authorization: Bearer {KEY}",
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
        assert result.returncode == 0, result.stdout[-6000:]
        assert " passed" in result.stdout and "failure" not in result.stdout.split("SUMMARY")[-1]
    finally:
        server.stop()
