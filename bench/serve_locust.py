"""`mtpf serve` under load against the servers a user would pick instead, with the field's load tool (locust).

Every server runs as its own process on loopback, all serving the same all-MiniLM-L6-v2 weights; each is checked
first (cosine of its vectors to sentence-transformers' on 8 texts) and then loaded by locust, headless, with
`--clients` users that post as fast as answers come: (a) 32 texts per request, (b) one text per request. Rounds are
interleaved (every server in turn, per round), so a drift of the machine hits all alike; the ratios of `mtpf serve`
to each peer are reported per round (median and range).

    python bench/serve_locust.py --release OUT [--export SHARED] [--infinity_venv V] [--rounds 2 --seconds 20]

OUT: `python -m mtpf init --backbone offline:minilm-l6 --output OUT` (so that `base` is all-MiniLM-L6-v2 itself);
SHARED: `python -m mtpf export OUT --shared --slot tc --output SHARED --quantize int8` (adds the ONNX Runtime backends);
V: `bash ../shared/peers/setup-infinity.sh V` (adds infinity-emb's torch engine). The sentence-transformers + FastAPI
baseline (`bench/load/st_server.py`) always runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from common import write_report

from mtpf.data.roots import TC_DATA
from mtpf.weights import resolve_model_path

HERE = Path(__file__).resolve().parent
WORKLOADS = {"32 texts per request": 32, "1 text per request": 1}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_commands(args: argparse.Namespace) -> dict[str, tuple[list[str], str]]:
    """{name: (command with {port}, served model name)} of every server this run compares."""
    mtpf = [sys.executable, "-m", "mtpf", "serve", args.release, "--port", "{port}", "--apps_state", "none"]
    servers = {"mtpf torch": (mtpf, "base")}
    if args.export:
        servers["mtpf onnx fp32"] = ([*mtpf, "--backend", "onnx", "--onnx", args.export], "base")
        if (Path(args.export) / "backbone.int8.onnx").is_file():
            int8 = [*mtpf, "--backend", "onnx", "--onnx", args.export, "--onnx_precision", "int8"]
            servers["mtpf onnx int8"] = (int8, "base")
    servers["sentence-transformers + FastAPI"] = (
        [sys.executable, str(HERE / "load" / "st_server.py"), args.model_dir, "{port}"],
        "minilm",
    )
    if args.infinity_venv:
        infinity = [f"{args.infinity_venv}/bin/infinity_emb", "v2", "--model-id", args.model_dir]
        infinity += ["--served-model-name", "minilm", "--host", "127.0.0.1", "--port", "{port}", "--url-prefix", "/v1"]
        servers["infinity-emb torch"] = ([*infinity, "--engine", "torch", "--device", "cpu"], "minilm")
    return servers


def start(command: list[str], model: str, log: Path) -> tuple[subprocess.Popen, str]:
    """Start a server and wait until it embeds a text (up to 10 minutes: model loads are slow on a busy machine)."""
    port = free_port()
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        DO_NOT_TRACK="1",
        INFINITY_ANONYMOUS_USAGE_STATS="0",
    )
    with log.open("w") as out:
        process = subprocess.Popen([part.format(port=port) for part in command], stdout=out, stderr=out, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise RuntimeError(f"{command[:4]} exited with {process.returncode}; see {log}")
        try:
            if httpx.post(f"{url}/v1/embeddings", json={"model": model, "input": ["ready?"]}, timeout=30).is_success:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    process.kill()
    raise RuntimeError(f"{command[:4]} did not answer in 10 minutes; see {log}")


def min_cosine(url: str, model: str, texts: list[str], reference: np.ndarray) -> float:
    data = httpx.post(f"{url}/v1/embeddings", json={"model": model, "input": texts}, timeout=60).json()["data"]
    got = np.array([row["embedding"] for row in data])
    cosines = (got * reference).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
    return float(cosines.min())


def load(url: str, model: str, per_request: int, args: argparse.Namespace, texts_file: Path) -> dict:
    """One headless locust run; its aggregated requests/s, embeddings/s, latency percentiles and failures."""
    with tempfile.TemporaryDirectory() as scratch:
        prefix = Path(scratch) / "run"
        env = dict(os.environ, BENCH_MODEL=model, BENCH_TEXTS=str(per_request), BENCH_TEXTS_FILE=str(texts_file))
        command = ["locust", "-f", str(HERE / "load" / "locustfile.py"), "--headless", "-u", str(args.clients),
                   "-r", str(args.clients), "-t", f"{args.seconds}s", "--host", url, "--csv", str(prefix),
                   "--only-summary", "--loglevel", "ERROR"]  # fmt: skip
        subprocess.run(command, env=env, check=True, capture_output=True)
        with open(f"{prefix}_stats.csv", encoding="utf-8") as handle:
            total = next(row for row in csv.DictReader(handle) if row["Name"] == "Aggregated")
    rate = float(total["Requests/s"])
    return {"requests_per_s": round(rate, 2), "embeddings_per_s": round(rate * per_request, 1),
            "p50_ms": float(total["50%"]), "p99_ms": float(total["99%"]),
            "requests": int(total["Request Count"]), "failures": int(total["Failure Count"])}  # fmt: skip


def ratios(runs: dict, workload: str, key: str) -> dict:
    """Per round, the best `mtpf serve` backend divided by each peer; median and range over rounds."""
    names = list(runs)
    ours = [n for n in names if n.startswith("mtpf")]
    rounds = len(next(iter(runs.values()))[workload])
    table = {}
    for peer in (n for n in names if not n.startswith("mtpf")):
        per_round = [max(runs[o][workload][r][key] for o in ours) / max(runs[peer][workload][r][key], 1e-9)
                     for r in range(rounds)]  # fmt: skip
        table[peer] = {"median": round(statistics.median(per_round), 2), "min": round(min(per_round), 2),
                       "max": round(max(per_round), 2)}  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", required=True)
    parser.add_argument("--export", default=None)
    parser.add_argument("--infinity_venv", default=None)
    parser.add_argument("--model_dir", default=resolve_model_path("offline:minilm-l6"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--output", default="bench/results/serve_locust.json")
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    lines = (Path(TC_DATA) / "banking77/test.jsonl").read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines[:512]]
    reference = SentenceTransformer(args.model_dir, device="cpu", trust_remote_code=True).encode(texts[:8])
    workdir = Path(tempfile.mkdtemp(prefix="serve-locust-"))
    texts_file = workdir / "texts.txt"
    texts_file.write_text("\n".join(texts) + "\n", encoding="utf-8")
    servers, checks, refused = {}, {}, {}
    try:
        for name, (command, model) in server_commands(args).items():
            try:
                process, url = start(command, model, workdir / f"{name.replace(' ', '_')}.log")
            except RuntimeError as err:  # reported, not timed (e.g. a backend that refuses to serve this model)
                refused[name] = str(err)
                continue
            servers[name] = (process, url, model)
            checks[name] = round(min_cosine(url, model, texts[:8], reference), 6)
        runs = {name: {workload: [] for workload in WORKLOADS} for name in servers}
        for _ in range(args.rounds):
            for workload, per_request in WORKLOADS.items():
                for name, (_, url, model) in servers.items():
                    runs[name][workload].append(load(url, model, per_request, args, texts_file))
                    print(name, workload, runs[name][workload][-1], flush=True)
    finally:
        for process, _, _ in servers.values():
            process.terminate()
            process.wait(timeout=60)
    results = {
        "min_cosine_to_sentence_transformers": checks,
        "not_started": refused,
        "settings": {"rounds": args.rounds, "seconds": args.seconds, "clients": args.clients, "cpus": os.cpu_count()},
        "runs": runs,
        "mtpf_best_over_peer": {
            "embeddings_per_s, 32 texts per request": ratios(runs, "32 texts per request", "embeddings_per_s"),
            "requests_per_s, 1 text per request": ratios(runs, "1 text per request", "requests_per_s"),
        },
    }
    write_report(args.output, " ".join(["python", *sys.argv]), results)


if __name__ == "__main__":
    main()
