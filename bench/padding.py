"""Benchmark 9: the padding share of pre-finetuning batches, with and without length bucketing / chunking.

Builds each task's step batches from a config exactly as training does (no model is run) and counts, over the
first `--steps` steps, the share of padded positions among all positions the encoder runs. NER batches are
measured as shuffled (`--ner_length_buckets 0`, the default) and bucketed. TC batches cannot be regrouped across
batches (a batch's pairs are its in-batch negatives), so they are measured as one padded forward and as embedded in
length-sorted chunks of N texts (`--tc_length_chunk N`, `mtpf/data/padding.py`), which keeps every batch as it is.

    python bench/padding.py [CONFIG.yaml] [--steps 200] [--buckets 8] [--tc-chunks 32 16]
"""

from __future__ import annotations

import argparse
import sys

from common import chunk_masks, masks_of, write_report

from mtpf.release import load_mtpf_encoder
from mtpf.tasks import TaskContext, get_task
from mtpf.training.args import parse_args


def padding_share(step_batches, steps: int, chunk: int = 0) -> dict:
    """Real and padded positions over `steps` steps (as length-sorted chunks of `chunk` rows when set)."""
    real = padded = 0
    for step in range(steps):
        masks = masks_of(step_batches(step))
        if chunk:
            masks = [part for mask in masks for part in chunk_masks(mask, chunk)]
        for mask in masks:
            real, padded = real + int(mask.sum()), padded + mask.numel()
    return {"real_tokens": real, "positions": padded, "padding_share": round(1 - real / padded, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--buckets", type=int, default=8)
    parser.add_argument("--tc-chunks", type=int, nargs="*", default=[32, 16])
    parser.add_argument("--output", default="bench/results/padding.json")
    options = parser.parse_args()
    results = {}
    for name, overrides in (("ner", []), ("ner_bucketed", ["--ner_length_buckets", str(options.buckets)]), ("tc", [])):
        model_args, data_args, args = parse_args([options.config, "--output_dir", "/tmp/mtpf-padding", *overrides])
        _, tokenizer = load_mtpf_encoder(model_args.backbone, tasks=())
        context = TaskContext(tokenizer, args.seed, 0, 1, args.main_process_first)
        task = get_task(name.split("_")[0]).from_args(data_args)
        batches = task.build_batches(context)
        results[name] = padding_share(batches, options.steps)
        print(name, results[name], flush=True)
        for chunk in options.tc_chunks if name == "tc" else ():
            results[f"tc_length_chunks_{chunk}"] = padding_share(batches, options.steps, chunk)
            print(f"tc_length_chunks_{chunk}", results[f"tc_length_chunks_{chunk}"], flush=True)
    write_report(options.output, " ".join(["python", *sys.argv]), results)


if __name__ == "__main__":
    main()
