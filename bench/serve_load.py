"""Benchmark 7: `mtpf serve` under load, and the serving path's throughput against the CPU's matmul roofline.

Part 1 (the engine, no HTTP): CoNLL-2003 test sentences sorted by length, run through the server's own
`Engine.run` (a) one sentence per forward, (b) in batches of 32 for one app, (c) the same batches with rows spread
over three apps (mixed, `adapter_names`). Reports sentences/s, real (unpadded) tokens/s and achieved GFLOP/s next
to `torch.matmul`'s rate (2048x2048, fp32; bf16 too where the CPU runs it natively) measured in the same run.
Targets: (b) >= 4x the sentences/s of (a); (c) <= 1.15x the time of (b).

Part 2 (HTTP): a real server in a subprocess with the three apps; `--clients` threads send one-sentence requests
to random apps for `--seconds`; throughput, p50/p99 latency and errors, with micro-batching on and, for the
same load, off (`--max_batch_tokens 1`: every row its own forward).

    python bench/serve_load.py [--release outputs/demo-release] [--apps-dir outputs/bench-export/apps]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import torch
from common import encoder_forward_flops, roofline, write_report

from mtpf.data.conll import ConllFormat, read_conll
from mtpf.data.roots import CONLL_TEST
from mtpf.serve.engine import Engine, Row

ROOT = Path(__file__).resolve().parents[1]


def forward_flops(engine: Engine, rows: list[Row]) -> float:
    config = engine.model.get_base_model().config.backbone_config
    return encoder_forward_flops(config, len(rows), max(row.tokens for row in rows))


def time_batches(engine: Engine, batches: list[list[Row]], repeats: int = 3) -> float:
    for batch in batches[:2]:
        engine.run(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            engine.run(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def engine_part(engine: Engine, apps: list[str], sentences: list[str]) -> dict:
    tokens = [len(encoded.ids) for encoded in engine.encode(sentences)]
    order = sorted(range(len(sentences)), key=tokens.__getitem__)
    served = [engine.served[name] for name in apps]
    # Every row asks for its app's embedding: the same output work in every way, so only batching and the mix differ.
    rows = [Row(served[0], sentences[i], "embeddings", tokens[i]) for i in order]
    mixed = [Row(served[k % 3], row.text, "embeddings", row.tokens) for k, row in enumerate(rows)]
    ways = {
        "batch_1": [[row] for row in rows],
        "batch_32": [rows[i : i + 32] for i in range(0, len(rows), 32)],
        "batch_32_mixed_3_apps": [mixed[i : i + 32] for i in range(0, len(mixed), 32)],
    }
    real_tokens = sum(tokens)
    out = {}
    for name, batches in ways.items():
        seconds = time_batches(engine, batches)
        flops = sum(forward_flops(engine, batch) for batch in batches)
        out[name] = {
            "sentences_per_s": round(len(rows) / seconds, 1),
            "seconds": round(seconds, 3),
            "real_tokens_per_s": round(real_tokens / seconds),
            "gflops_per_s": round(flops / seconds / 1e9, 1),
        }
    out["batched_over_batch_1"] = round(out["batch_32"]["sentences_per_s"] / out["batch_1"]["sentences_per_s"], 2)
    out["mixed_over_single_app_time"] = round(out["batch_32_mixed_3_apps"]["seconds"] / out["batch_32"]["seconds"], 3)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_part(
    release: str, app_dirs: dict[str, Path], sentences: list[str], load: tuple[float, int], extra: list[str]
) -> dict:
    """Requests/s through `mtpf serve` (started with `extra` flags) from `load` = (seconds, clients)."""
    seconds, clients = load
    port = free_port()
    command = [sys.executable, "-m", "mtpf", "serve", release, "--port", str(port), *extra]
    for name, folder in app_dirs.items():
        command += ["--app", f"{name}={folder}"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    models = httpx.get(f"{url}/v1/models").json()["data"]
    endpoints = {m["id"]: m["endpoints"][-1] for m in models if m["id"] in app_dirs}  # ner or classify
    latencies: list[float] = []
    errors = [0]
    stop = time.monotonic() + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=60) as session:
            while time.monotonic() < stop:
                app = rng.choice(list(app_dirs))
                started = time.perf_counter()
                response = session.post(f"/v1/{endpoints[app]}", json={"model": app, "input": rng.choice(sentences)})
                latencies.append(time.perf_counter() - started)
                errors[0] += response.status_code != 200

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=60)
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors[0],
        "seconds": seconds,
        "clients": clients,
        "sentences_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
        "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1),
        "server_options": extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="outputs/demo-release")
    parser.add_argument("--apps-dir", default="outputs/bench-export/apps", help="Three apps (bench/export.py).")
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="bench/results/serve_load.json")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    conll = [" ".join(s.tokens) for s in read_conll(Path(CONLL_TEST), ConllFormat())][: options.sentences]
    app_dirs = {p.name: p for p in sorted(Path(options.apps_dir).iterdir()) if (p / "mtpf_app.json").is_file()}
    engine = Engine(options.release, options.threads)
    for name, folder in app_dirs.items():
        engine.add_app(name, str(folder))
    results = roofline()
    results["engine_fp32"] = engine_part(engine, list(app_dirs), conll)
    if results["cpu"]["native"]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results["engine_bf16"] = engine_part(engine, list(app_dirs), conll)
    del engine
    threads = ["--threads", str(options.threads)]
    load = (options.seconds, options.clients)
    results["http_batched"] = http_part(options.release, app_dirs, conll, load, threads)
    results["http_batch_1"] = http_part(
        options.release, app_dirs, conll, (options.seconds / 2, options.clients), [*threads, "--max_batch_tokens", "1"]
    )
    for key, value in results.items():
        print(key, value)
    write_report(options.output, " ".join(["python", *sys.argv]), results)


if __name__ == "__main__":
    main()
