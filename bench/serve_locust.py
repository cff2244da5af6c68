"""`mtpf serve` under load against the servers a user would pick instead, with the field's load tool (locust).

Every server runs as its own process on loopback, all serving the same all-MiniLM-L6-v2 weights; each is checked
first (cosine of its vectors to sentence-transformers' on 8 texts) and then loaded by locust, headless, with
`--clients` users that post as fast as answers come: (a) 32 texts per request, (b) one text per request. Rounds are
interleaved (every target in turn, per round), so a drift of the machine hits all alike; ratios are per round
(median and range): the best `mtpf serve` target over each peer, each ONNX Runtime backend over PyTorch, and what
an app (LoRA + head) costs against the backbone alone.

    python bench/serve_locust.py --release OUT [--export SHARED] [--app APP] [--infinity_venv V] [--peers_onnx]
        [--ray_replicas N] [--only NAME ...] [--rounds 2 --seconds 20]

OUT: `python -m mtpf init --backbone offline:minilm-l6 --output OUT` (so that `base` is all-MiniLM-L6-v2 itself);
SHARED: `python -m mtpf export OUT --shared --slot tc --output SHARED --quantize int8` (adds the ONNX Runtime backends);
APP: a classification app of OUT (`mtpf finetune`), loaded by the PyTorch server and timed on /v1/embeddings and
/v1/classify; V: `bash ../shared/peers/setup-infinity.sh V` (adds infinity-emb's torch engine; with `--peers_onnx`
also its ONNX Runtime engine and sentence-transformers' ONNX backend, on a `model.onnx` exported here as
`../shared/peers/README.md` says); N: `mtpf serve --ray` with N replicas. The sentence-transformers + FastAPI
baseline (`bench/load/st_server.py`) always runs. `--only` keeps the targets whose name contains one of its words.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from common import write_report

from mtpf.data.roots import TC_DATA
from mtpf.weights import resolve_model_path

HERE = Path(__file__).resolve().parent
WORKLOADS = {"32 texts per request": 32, "1 text per request": 1}
APP = "bench_app"  # the name the PyTorch server gives --app


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Target:
    """One thing to load: a server (its command with {port}, run in `cwd`), the model asked for and the endpoint.
    Targets with the same command share one server process."""

    command: list[str]
    model: str
    endpoint: str = "embeddings"
    cwd: str | None = None
    peer: bool = False  # a server a user would pick instead of mtpf
    same_vectors: bool = True  # its embeddings must equal sentence-transformers' (an app's need not)

    @property
    def server(self) -> tuple:
        return (*self.command, self.cwd)


def mtpf_targets(args: argparse.Namespace, workdir: Path) -> dict[str, Target]:
    """`mtpf serve` in each backend asked for: PyTorch (with an app when one is given), ONNX Runtime, Ray."""
    mtpf = [sys.executable, "-m", "mtpf", "serve", args.release, "--port", "{port}", "--apps_state", "none"]
    torch_server = [*mtpf, "--app", f"{APP}={args.app}"] if args.app else mtpf
    targets = {"mtpf torch": Target(torch_server, "base")}
    if args.app:
        targets["mtpf torch, app embeddings"] = Target(torch_server, APP, same_vectors=False)
        targets["mtpf torch, app classify"] = Target(torch_server, APP, "classify", same_vectors=False)
    if args.export:
        onnx = [*mtpf, "--backend", "onnx", "--onnx", args.export]
        targets["mtpf onnx fp32"] = Target(onnx, "base")
        if (Path(args.export) / "backbone.int8.onnx").is_file():
            targets["mtpf onnx int8"] = Target([*onnx, "--onnx_precision", "int8"], "base")
    if args.ray_replicas:
        apps_dir = workdir / "ray-apps"
        apps_dir.mkdir(exist_ok=True)
        ray = [*mtpf, "--ray", "--apps_dir", str(apps_dir), "--replicas", str(args.ray_replicas)]
        targets[f"mtpf ray, {args.ray_replicas} replicas"] = Target(ray, "base")
    return targets


def peer_targets(args: argparse.Namespace, workdir: Path) -> dict[str, Target]:
    """The peers: sentence-transformers + FastAPI always; infinity-emb (torch, and with --peers_onnx its ONNX Runtime
    engine and sentence-transformers' ONNX backend) when its environment is given."""
    st_server = str(HERE / "load" / "st_server.py")
    targets = {
        "sentence-transformers + FastAPI": Target(
            [sys.executable, st_server, args.model_dir, "{port}"], "minilm", peer=True
        )
    }
    if not args.infinity_venv:
        return targets
    venv = args.infinity_venv
    infinity = [f"{venv}/bin/infinity_emb", "v2", "--served-model-name", "minilm", "--host", "127.0.0.1"]
    infinity += ["--port", "{port}", "--url-prefix", "/v1", "--device", "cpu"]
    torch_engine = [*infinity, "--model-id", args.model_dir, "--engine", "torch"]
    targets["infinity-emb torch"] = Target(torch_engine, "minilm", peer=True)
    if args.peers_onnx:
        folder = peer_onnx_folder(args.model_dir, workdir / "minilm-onnx")
        st_onnx = [f"{venv}/bin/python", st_server, str(folder), "{port}", "--backend", "onnx"]
        targets["sentence-transformers + FastAPI, ONNX"] = Target(st_onnx, "minilm", peer=True)
        optimum = [*infinity, "--model-id", ".", "--engine", "optimum", "--pooling-method", "mean"]
        targets["infinity-emb ONNX"] = Target(optimum, "minilm", cwd=str(folder), peer=True)
    return targets


def peer_onnx_folder(model_dir: str, folder: Path) -> Path:
    """A copy of the model folder with the plain encoder as `model.onnx` (inputs input_ids, attention_mask,
    token_type_ids; output last_hidden_state) at its root and in `onnx/`, where infinity's and sentence-transformers'
    ONNX backends look; neither exports by itself offline here."""
    import torch
    from transformers import AutoModel

    shutil.copytree(model_dir, folder, dirs_exist_ok=True)
    encoder = AutoModel.from_pretrained(model_dir).eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.encoder(input_ids, attention_mask, token_type_ids).last_hidden_state

    example = (
        torch.ones(2, 8, dtype=torch.long),
        torch.ones(2, 8, dtype=torch.long),
        torch.zeros(2, 8, dtype=torch.long),
    )
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=512)
    dims = {name: {0: batch, 1: sequence} for name in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        torch.onnx.export(
            LastHiddenState(),
            example,
            str(folder / "model.onnx"),
            input_names=list(dims),
            output_names=["last_hidden_state"],
            dynamic_shapes=dims,
            dynamo=True,
            external_data=False,
        )
    (folder / "onnx").mkdir(exist_ok=True)
    shutil.copy(folder / "model.onnx", folder / "onnx" / "model.onnx")
    return folder


def start(target: Target, log: Path) -> tuple[subprocess.Popen, str]:
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
        command = [part.format(port=port) for part in target.command]
        process = subprocess.Popen(command, stdout=out, stderr=out, env=env, cwd=target.cwd)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise RuntimeError(f"{command[:4]} exited with {process.returncode}; see {log}")
        try:
            ready = httpx.post(f"{url}/v1/embeddings", json={"model": target.model, "input": ["ready?"]}, timeout=30)
            if ready.is_success:
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


def load(url: str, target: Target, per_request: int, args: argparse.Namespace, texts_file: Path) -> dict:
    """One headless locust run; its aggregated requests/s, embeddings/s, latency percentiles and failures."""
    with tempfile.TemporaryDirectory() as scratch:
        prefix = Path(scratch) / "run"
        env = dict(os.environ, BENCH_MODEL=target.model, BENCH_TEXTS=str(per_request), BENCH_TEXTS_FILE=str(texts_file))
        env["BENCH_ENDPOINT"] = target.endpoint
        command = ["locust", "-f", str(HERE / "load" / "locustfile.py"), "--headless", "--only-summary"]
        command += ["-u", str(args.clients), "-r", str(args.clients), "-t", f"{args.seconds}s", "--host", url]
        command += ["--csv", str(prefix), "--loglevel", "ERROR"]
        subprocess.run(command, env=env, check=True, capture_output=True)
        with open(f"{prefix}_stats.csv", encoding="utf-8") as handle:
            total = next(row for row in csv.DictReader(handle) if row["Name"] == "Aggregated")
    rate = float(total["Requests/s"])
    return {
        "requests_per_s": round(rate, 2),
        "embeddings_per_s": round(rate * per_request, 1),
        "p50_ms": milliseconds(total["50%"]),
        "p99_ms": milliseconds(total["99%"]),
        "requests": int(total["Request Count"]),
        "failures": int(total["Failure Count"]),
    }


def milliseconds(cell: str) -> float:
    """A latency percentile of locust's CSV; `N/A` (no request answered in the run) is infinitely slow."""
    return float("inf") if cell == "N/A" else float(cell)


def spread(per_round: list[float]) -> dict:
    return {
        "median": round(statistics.median(per_round), 2),
        "min": round(min(per_round), 2),
        "max": round(max(per_round), 2),
    }


def per_round(runs: dict, workload: str, value) -> dict:
    """value(round's results by target) per round, as median and range."""
    rounds = len(next(iter(runs.values()))[workload])
    return spread([value({name: runs[name][workload][r] for name in runs}) for r in range(rounds)])


def comparisons(runs: dict, targets: dict[str, Target]) -> dict:
    """The ratios the issue asks for, per round: the best mtpf backbone target over each peer; ONNX Runtime over
    PyTorch (embeddings/s at 32 texts, p50 at one text: PyTorch's over ONNX's); what an app costs (the backbone's
    rate over the app's)."""
    ours = [name for name, target in targets.items() if not target.peer and target.model == "base"]
    peers = [name for name, target in targets.items() if target.peer]
    big, single = "32 texts per request", "1 text per request"
    table: dict[str, dict] = {"mtpf best over peer": {}}
    for peer in peers if ours else []:
        for workload, key in ((big, "embeddings_per_s"), (single, "requests_per_s")):
            ratio = per_round(runs, workload, lambda r, p=peer, k=key: max(r[o][k] for o in ours) / max(r[p][k], 1e-9))
            table["mtpf best over peer"][f"{peer}, {key}, {workload}"] = ratio
    for name in (n for n in ours if n.startswith("mtpf onnx") and "mtpf torch" in runs):
        table[f"{name} over mtpf torch"] = {
            "embeddings_per_s, 32 texts": per_round(
                runs, big, lambda r, n=name: r[n]["embeddings_per_s"] / r["mtpf torch"]["embeddings_per_s"]
            ),
            "p50 speed-up, 1 text": per_round(
                runs, single, lambda r, n=name: r["mtpf torch"]["p50_ms"] / max(r[n]["p50_ms"], 1e-9)
            ),
        }
    for name in (n for n, t in targets.items() if t.model == APP):
        table[f"{name}: backbone rate over the app's"] = {
            workload: per_round(
                runs, workload, lambda r, n=name: r["mtpf torch"]["requests_per_s"] / max(r[n]["requests_per_s"], 1e-9)
            )
            for workload in WORKLOADS
        }
    return table


def selected_targets(args: argparse.Namespace, workdir: Path) -> dict[str, Target]:
    targets = mtpf_targets(args, workdir) | peer_targets(args, workdir)
    if args.only:
        targets = {name: t for name, t in targets.items() if any(word in name for word in args.only)}
    return targets


def start_servers(targets: dict[str, Target], workdir: Path) -> tuple[dict, dict, dict]:
    """One process per distinct server; ({server: (process, url)}, {target: url}, {target: why it did not start})."""
    servers, urls, refused = {}, {}, {}
    for name, target in targets.items():
        if target.server not in servers:
            try:
                servers[target.server] = start(target, workdir / f"{name.replace(' ', '_').replace(',', '')}.log")
            except RuntimeError as err:  # reported, not timed (e.g. a backend that refuses to serve this model)
                refused[name] = str(err)
                continue
        urls[name] = servers[target.server][1]
    return servers, urls, refused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", required=True)
    parser.add_argument("--export", default=None)
    parser.add_argument("--app", default=None, help="A classification app of --release, timed beside the backbone.")
    parser.add_argument("--infinity_venv", default=None)
    parser.add_argument("--peers_onnx", action="store_true", help="Also the peers' ONNX Runtime backends.")
    parser.add_argument("--ray_replicas", type=int, default=0, help="Also `mtpf serve --ray` with this many replicas.")
    parser.add_argument("--only", nargs="*", default=None, help="Keep the targets whose name contains one of these.")
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
    targets = selected_targets(args, workdir)
    servers, urls, refused = start_servers(targets, workdir)
    try:
        checks = {
            name: round(min_cosine(urls[name], targets[name].model, texts[:8], reference), 6)
            for name in urls
            if targets[name].same_vectors
        }
        runs = {name: {workload: [] for workload in WORKLOADS} for name in urls}
        for _ in range(args.rounds):
            for workload, per_request in WORKLOADS.items():
                for name, url in urls.items():
                    runs[name][workload].append(load(url, targets[name], per_request, args, texts_file))
                    print(name, workload, runs[name][workload][-1], flush=True)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=60)
    results = {
        "min_cosine_to_sentence_transformers": checks,
        "not_started": refused,
        "settings": {"rounds": args.rounds, "seconds": args.seconds, "clients": args.clients, "cpus": os.cpu_count()},
        "runs": runs,
        "ratios": comparisons(runs, {name: targets[name] for name in urls}),
    }
    write_report(args.output, " ".join(["python", *sys.argv]), results)


if __name__ == "__main__":
    main()
