"""The serving backends side by side: `mtpf serve`'s PyTorch engine against its ONNX Runtime engine (fp32, int8).

Both engines answer the same rows through their own `run` (the code behind the HTTP API, no network): Banking77 test
texts, (a) in forwards of 32 texts and (b) one text per forward, for the `tc` slot. Rounds are interleaved (each
round times every backend in turn), so a drift of the machine's speed hits all alike. Answers are checked against
the PyTorch engine (max |Δ| of the embeddings) before anything is timed.

    python bench/serve_backends.py --release OUT --export EXPORT_DIR [--repeats 15]

EXPORT_DIR: `python -m mtpf export OUT --shared --slot tc --output EXPORT_DIR [--quantize int8]`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from common import interleaved_medians, write_report

from mtpf.data.roots import TC_DATA
from mtpf.serve.engine import Engine, Row
from mtpf.serve.onnx_engine import OnnxEngine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", required=True)
    parser.add_argument("--export", required=True)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--output", default="bench/results/serve_backends.json")
    args = parser.parse_args()
    lines = (Path(TC_DATA) / "banking77/test.jsonl").read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines[:32]]
    engines = {"torch": Engine(args.release, threads=torch.get_num_threads())}
    engines["onnx fp32"] = OnnxEngine(args.release, args.export, "fp32")
    refused = {}
    if (Path(args.export) / "backbone.int8.onnx").is_file():
        int8 = OnnxEngine(args.release, args.export, "int8")
        if "tc" in int8.served:
            engines["onnx int8"] = int8
        else:
            refused["onnx int8"] = int8.refused["tc"]  # the export's fidelity check said no: not served, not timed

    def rows(engine, batch: list[str]) -> list[Row]:
        served = engine.lookup("tc", "embeddings")
        return [Row(served, text, "embeddings", 0) for text in batch]

    reference = np.array(engines["torch"].run(rows(engines["torch"], texts)))
    fidelity = {name: float(np.abs(np.array(e.run(rows(e, texts))) - reference).max()) for name, e in engines.items()}
    batch32 = {name: (lambda e=e: e.run(rows(e, texts))) for name, e in engines.items()}
    single = {name: (lambda e=e: [e.run(rows(e, [text])) for text in texts[:8]]) for name, e in engines.items()}
    times32 = interleaved_medians(batch32, repeats=args.repeats)
    times1 = interleaved_medians(single, repeats=args.repeats)
    results = {
        name: {
            "max_abs_diff_vs_torch": float(f"{fidelity[name]:.3g}"),
            "batch32_embeddings_per_s": round(32 / times32[name], 1),
            "batch1_p50_ms": round(1000 * times1[name] / 8, 2),
            "batch32_speedup_vs_torch": round(times32["torch"] / times32[name], 2),
            "batch1_speedup_vs_torch": round(times1["torch"] / times1[name], 2),
        }
        for name in engines
    }
    results.update({name: {"refused": reason} for name, reason in refused.items()})
    for name, row in results.items():
        print(name, row)
    write_report(args.output, " ".join(["python bench/serve_backends.py", *sys.argv[1:]]), results)


if __name__ == "__main__":
    main()
