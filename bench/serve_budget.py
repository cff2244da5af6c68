"""The token budget of one forward (`mtpf serve --max_batch_tokens`): how fast each serving engine embeds the same
rows cut into forwards under each budget.

The rows (texts of three test sets of different lengths: Banking77 short, AG News medium, IMDB long, cut at 1,000
characters) are sorted by length and cut by the server's own rule (`length_sorted_batches`: rows x longest row under
the budget); each engine's `run` embeds them forward by forward (the code behind the HTTP API, no network). Budgets
are timed in turn, round after round, so a drift of the machine hits all alike; the result is real tokens per second.

    python bench/serve_budget.py --release OUT [--export SHARED] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

from common import write_report

from mtpf.data.roots import TC_DATA
from mtpf.serve.batching import length_sorted_batches
from mtpf.serve.engine import Engine, Row
from mtpf.serve.onnx_engine import OnnxEngine

DATASETS = {"banking77": 256, "ag_news": 128, "imdb": 48}  # test set: rows drawn
BUDGETS = [256, 512, 1024, 2048, 8192]


def rows_of(engine, dataset: str, count: int) -> list[Row]:
    lines = (Path(TC_DATA) / dataset / "test.jsonl").read_text(encoding="utf-8").split("\n")
    drawn = random.Random(0).sample([line for line in lines if line.strip()], count)
    texts = [json.loads(line)["text"][:1000] for line in drawn]
    base = engine.lookup("base", "embeddings")
    rows = [
        Row(base, text, "embeddings", len(encoded.ids), encoded) for text, encoded in zip(texts, engine.encode(texts))
    ]
    return [row for row in rows if row.tokens <= engine.max_tokens]


def tokens_per_second(engine, rows: list[Row], budget: int) -> float:
    start = time.perf_counter()
    for batch in length_sorted_batches(rows, budget):
        engine.run(batch)
    return sum(row.tokens for row in rows) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", required=True)
    parser.add_argument("--export", default=None, help="A shared-backbone export: adds the ONNX Runtime engine.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default="bench/results/serve_budget.json")
    args = parser.parse_args()
    engines = {"torch": Engine(args.release)}
    if args.export:
        engines["onnx fp32"] = OnnxEngine(args.release, args.export, "fp32")
        if (Path(args.export) / "backbone.int8.onnx").is_file():
            engines["onnx int8"] = OnnxEngine(args.release, args.export, "int8")
    results = {}
    for engine_name, engine in engines.items():
        for dataset, count in DATASETS.items():
            rows = rows_of(engine, dataset, count)
            tokens_per_second(engine, rows, 1024)  # warm-up
            rates: dict[int, list[float]] = {budget: [] for budget in BUDGETS}
            for _ in range(args.rounds):
                for budget in BUDGETS:
                    rates[budget].append(tokens_per_second(engine, rows, budget))
            results[f"{engine_name}, {dataset}"] = {
                "rows": len(rows),
                "longest": max(row.tokens for row in rows),
                "tokens_per_s": {budget: round(statistics.median(values)) for budget, values in rates.items()},
            }
            print(engine_name, dataset, results[f"{engine_name}, {dataset}"], flush=True)
    write_report(args.output, " ".join(["python", *sys.argv]), results)


if __name__ == "__main__":
    main()
