"""Contrastive batch scaling: peak RSS and time per pair, batch 64..1024, with and without gradient caching.

    python bench/contrastive_scaling.py [--backbone offline:minilm-l6] [--sizes 64 128 256 512 1024] [--mini 64]

Each (batch, mode) runs in its own process so its peak RSS is its own. One forward+backward of InfoNCE on real
pairs (the offline flickr30k captions, max 48 sub-tokens), after one warm-up step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from bench.common import peak_rss_gb, write_report
from mtpf.data.roots import PAIRS_DATA

PAIRS = f"{PAIRS_DATA}/flickr30k_captions"


def one_run(backbone: str, batch: int, mini: int, max_length: int) -> dict:
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
        if cached is None:
            embeddings = model(**texts).pooler_output
            loss(embeddings[:batch], embeddings[batch:]).backward()
        else:
            cached(lambda f: model(**f).pooler_output, texts, batch, backward=lambda t: t.backward())

    step(0)  # warm-up
    start = time.perf_counter()
    step(batch)
    seconds = time.perf_counter() - start
    return {
        "batch": batch,
        "grad_cache_mini_batch": mini,
        "seconds": round(seconds, 3),
        "ms_per_pair": round(1000 * seconds / batch, 2),
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
    parser.add_argument("--one", nargs=2, type=int, metavar=("BATCH", "MINI"), help=argparse.SUPPRESS)
    parser.add_argument("--output", default="bench/results/contrastive_scaling.json")
    args = parser.parse_args()
    if args.one:
        torch.manual_seed(0)
        print(json.dumps(one_run(args.backbone, args.one[0], args.one[1], args.max_length)))
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
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(result)
            print(
                f"batch {batch:5d} {'cached' if mini else 'plain '}: {result['ms_per_pair']:7.2f} ms/pair, "
                f"peak RSS {result['peak_rss_gb']:.2f} GB",
                flush=True,
            )
    base = next(r for r in results if r["batch"] == min(args.sizes) and not r["grad_cache_mini_batch"])
    for result in (r for r in results if "ms_per_pair" in r):
        result["time_per_pair_vs_plain_smallest"] = round(result["ms_per_pair"] / base["ms_per_pair"], 2)
    write_report(args.output, " ".join(["python", *sys.argv]), results)


if __name__ == "__main__":
    main()
