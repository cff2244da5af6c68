"""Benchmark 9: the padding share of pre-finetuning batches, with and without NER length bucketing.

Builds each task's step batches from a config exactly as training does (no model is run) and counts, over the
first `--steps` steps, the share of padded positions among all positions of the attention masks. NER batches are
measured as shuffled (`--ner_length_buckets 0`, the default) and bucketed; TC batches are measured as they are
(a batch's pairs are its in-batch negatives, so reordering them by length would change the objective).

    python bench/padding.py [CONFIG.yaml] [--steps 200] [--buckets 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import masks_of, write_report

from mtpf.release import load_mtpf_encoder
from mtpf.tasks import TaskContext, get_task
from mtpf.training.args import parse_args


def padding_share(step_batches, steps: int) -> dict:
    real = padded = 0
    for step in range(steps):
        for mask in masks_of(step_batches(step)):
            real, padded = real + int(mask.sum()), padded + mask.numel()
    return {"real_tokens": real, "positions": padded, "padding_share": round(1 - real / padded, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--buckets", type=int, default=8)
    parser.add_argument("--output", default="bench/results/padding.json")
    options = parser.parse_args()
    results = {}
    for name, overrides in (("ner", []), ("ner_bucketed", ["--ner_length_buckets", str(options.buckets)]), ("tc", [])):
        model_args, data_args, args = parse_args([options.config, "--output_dir", "/tmp/mtpf-padding", *overrides])
        _, tokenizer = load_mtpf_encoder(model_args.backbone, tasks=())
        context = TaskContext(tokenizer, args.seed, 0, 1, args.main_process_first)
        task = get_task(name.split("_")[0]).from_args(data_args)
        results[name] = padding_share(task.build_batches(context), options.steps)
        print(name, results[name], flush=True)
    write_report(options.output, " ".join(["python", *sys.argv]), results)


if __name__ == "__main__":
    main()
