"""Contrastive batch scaling: peak RSS and time per pair, batch 64..1024, with and without gradient caching.

    python bench/contrastive_scaling.py [--backbone offline:minilm-l6] [--sizes 64 128 256 512 1024] [--mini 64]
                                        [--bf16]

Each (batch, mode) runs in its own process so its peak RSS is its own. One forward+backward of InfoNCE on real
pairs (the offline flickr30k captions, max 48 sub-tokens), after one warm-up step. Beside time and memory: real
(unpadded) tokens/s and achieved GFLOP/s of the work done (3x the encoder's forward FLOPs; 4x with gradient
caching, which runs the forward twice) against `torch.matmul`'s rate measured in the main process; `--bf16` runs
the step under bf16 autocast (a CPU with native bf16 only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from types import SimpleNamespace

import torch
from common import encoder_forward_flops, peak_rss_gb, roofline, write_report

from mtpf.data.roots import PAIRS_DATA

PAIRS = f"{PAIRS_DATA}/flickr30k_captions"


def one_run(backbone: str, batch: int, mini: int, max_length: int, bf16: bool = False) -> dict:
    from mtpf.data.pairs import load_pair_source
    from mtpf.losses.cached_info_nce import CachedInfoNCE
    from mtpf.losses.info_nce import InfoNCELoss
    from mtpf.release import load_mtpf_encoder

    model, tokenizer = load_mtpf_encoder(backbone, tasks=())
    model.train()
    rows = load_pair_source(PAIRS).dataset.select(range(2 * batch))
    loss = InfoNCELoss(0.05)
    cached = CachedInfoNCE(loss, mini) if mini else None

    def step(offset: int) -> None:
        part = rows.select(range(offset, offset + batch))
        texts = tokenizer(
            list(part["anchor"]) + list(part["positive"]),
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        texts = dict(texts)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if cached is None:
                embeddings = model(**texts).pooler_output
                loss(embeddings[:batch], embeddings[batch:]).backward()
            else:
                step_functions = SimpleNamespace(
                    forward=lambda f: model(**f).pooler_output,
                    backward=lambda t: t.backward(),
                    no_sync=contextlib.nullcontext,
                )
                cached(step_functions, texts, batch)
        return texts["attention_mask"]

    step(0)  # warm-up
    start = time.perf_counter()
    mask = step(batch)
    seconds = time.perf_counter() - start
    flops = (4 if mini else 3) * encoder_forward_flops(model.config.backbone_config, *mask.shape)
    return {
        "batch": batch,
        "grad_cache_mini_batch": mini,
        "bf16": bf16,
        "seconds": round(seconds, 3),
        "ms_per_pair": round(1000 * seconds / batch, 2),
        "real_tokens_per_s": round(int(mask.sum()) / seconds),
        "gflops_per_s": round(flops / seconds / 1e9, 1),
        "peak_rss_gb": round(peak_rss_gb(), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="offline:minilm-l6")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--mini", type=int, default=64, help="gradient-caching mini-batch (texts)")
    parser.add_argument(
        "--plain-max", type=int, default=512, help="largest uncached batch to run (1024 plain needs ~25 GB here)"
    )
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (native-bf16 CPUs only).")
    parser.add_argument("--one", nargs=2, type=int, metavar=("BATCH", "MINI"), help=argparse.SUPPRESS)
    parser.add_argument("--output", default="bench/results/contrastive_scaling.json")
    args = parser.parse_args()
    if args.one:
        torch.manual_seed(0)
        print(json.dumps(one_run(args.backbone, args.one[0], args.one[1], args.max_length, args.bf16)))
        return
    results = []
    for batch in args.sizes:
        for mini in (0, args.mini):
            if not mini and batch > args.plain_max:
                results.append(
                    {"batch": batch, "grad_cache_mini_batch": 0, "skipped": f"over --plain-max {args.plain_max}"}
                )
                print(f"batch {batch:5d} plain : skipped (over --plain-max)", flush=True)
                continue
            command = [
                sys.executable,
                __file__,
                "--backbone",
                args.backbone,
                "--max-length",
                str(args.max_length),
                "--one",
                str(batch),
                str(mini),
                *(["--bf16"] if args.bf16 else []),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(result)
            print(
                f"batch {batch:5d} {'cached' if mini else 'plain '}: {result['ms_per_pair']:7.2f} ms/pair, "
                f"peak RSS {result['peak_rss_gb']:.2f} GB, {result['real_tokens_per_s']} tok/s, "
                f"{result['gflops_per_s']} GFLOP/s",
                flush=True,
            )
    base = next(r for r in results if r["batch"] == min(args.sizes) and not r["grad_cache_mini_batch"])
    for result in (r for r in results if "ms_per_pair" in r):
        result["time_per_pair_vs_plain_smallest"] = round(result["ms_per_pair"] / base["ms_per_pair"], 2)
    write_report(args.output, " ".join(["python", *sys.argv]), {**roofline(), "runs": results})


if __name__ == "__main__":
    main()
