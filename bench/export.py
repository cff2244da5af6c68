"""Benchmark 6: device export of three apps on one all-MiniLM-L6-v2 release: size, latency and fidelity.

Fine-tunes three apps on the release (`mtpf finetune`, a CPU-sized protocol: two NER taggers and one sentence
classifier), exports each as its own merged graph (fp32, int8) and all three on one shared backbone graph with an
onnxruntime adapter file per app (fp32, int8), then measures, on each app's own test sentences:
MB on disk, ms per sentence at batch 1 and at batch 32 (the same sentences, in the same order), and the task score
of the exported graph next to PyTorch's (entity F1 / accuracy), from each export's `export_report.json`. The 64
timed sentences are sorted by length before batching (as a server batches), the same for every form.

    python bench/export.py [--release outputs/demo-release] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from common import best_of, write_report

from mtpf.apps import FinetuneArguments, finetune_app
from mtpf.apps.classification import ClassificationProtocol
from mtpf.apps.ner.train import NerProtocol
from mtpf.data.roots import TC_DATA
from mtpf.export import export, export_shared, exportable_app, shared_apps
from mtpf.export.onnx import Exportable
from mtpf.export.shared import OUTPUTS, adapter_runner, graph_session

NER = dict(
    warmup_epochs=2,
    epochs=8,
    batch_size=16,
    learning_rate=1e-3,
    max_length=128,
    max_dev_sentences=200,
    max_test_sentences=400,
)
APPS = {  # name -> (task, data, protocol)
    "ai-ner": ("ner", "crossner_ai", NerProtocol(**NER)),
    "music-ner": ("ner", "crossner_music", NerProtocol(**NER)),
    "emotion": (
        "classification",
        "emotion",
        ClassificationProtocol(
            warmup_epochs=2,
            epochs=2,
            max_length=64,
            max_train_sentences=2000,
            max_dev_sentences=500,
            max_test_sentences=1000,
        ),
    ),
}
TIMED_SENTENCES = 64


def ms_per_sentence(run, batches: list[dict[str, np.ndarray]], sentences: int, repeats: int = 3) -> float:
    """Median over repeats of the time to run every batch once, per sentence (one warm-up pass first)."""
    return 1000 * best_of(lambda: [run(batch) for batch in batches], repeats=repeats, warmup=1) / sentences


def batches_of(reference: Exportable, size: int) -> list[dict[str, np.ndarray]]:
    """The first TIMED_SENTENCES test sentences, shortest first (as a server would batch them), in batches."""
    from dataclasses import replace

    from mtpf.export.onnx import _encode

    count = min(TIMED_SENTENCES, len(reference.texts))
    lengths = [len(reference.tokenizer(text)["input_ids"]) for text in reference.texts[:count]]
    order = sorted(range(count), key=lengths.__getitem__)
    ordered = replace(
        reference,
        texts=[reference.texts[i] for i in order],
        gold=[reference.gold[i] for i in order] if reference.gold else [],
    )
    keys = ("input_ids", "attention_mask")
    return [
        {k: v.numpy() for k, v in _encode(ordered, start, start + size).items() if k in keys}
        for start in range(0, count, size)
    ]


def latency(run, reference: Exportable) -> dict[str, float]:
    return {
        f"ms_batch_{size}": round(ms_per_sentence(run, batches_of(reference, size), TIMED_SENTENCES), 3)
        for size in (1, 32)
    }


def session_runner(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)[0]


def pytorch_runner(reference: Exportable):
    def run(feeds):
        with torch.inference_mode():
            return reference.module(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))

    return run


def score(check: dict) -> dict:
    keys = ("f1_pytorch", "f1_onnx", "accuracy_pytorch", "accuracy_onnx", "max_abs_diff", "accepted")
    return {k: check[k] for k in keys if k in check}


def train_apps(release: str, workdir: Path) -> dict[str, Path]:
    app_dirs = {}
    for name, (task, data, protocol) in APPS.items():
        app_dirs[name] = workdir / "apps" / name
        if not (app_dirs[name] / "mtpf_app.json").is_file():  # resume: an app already trained is kept
            finetune_app(FinetuneArguments(release, data, str(app_dirs[name]), task=task), protocol)
    return app_dirs


def per_app_rows(name: str, app_dir: Path, workdir: Path, threads: int) -> list[dict]:
    """PyTorch (merged) and the app's own fp32 / int8 graphs."""
    reference = exportable_app(app_dir, sentences=200)
    folder = export(reference, workdir / "per-app" / name, quantize="int8", overwrite=True, source=str(app_dir))
    report = json.loads((folder / "export_report.json").read_text())
    rows = [{"app": name, "form": "pytorch", "megabytes": None, **latency(pytorch_runner(reference), reference)}]
    for file, entry in report["artifacts"].items():
        timing = latency(session_runner(folder / file, threads), reference)
        form = f"per-app {entry['precision']}"
        rows.append({"app": name, "form": form, "megabytes": entry["megabytes"], **timing, **score(entry)})
    return rows


def shared_rows(release: str, app_dirs: dict[str, Path], workdir: Path) -> tuple[list[dict], dict]:
    """Every app on the one shared backbone graph (fp32, int8), each with its adapter file active."""
    lines = (Path(TC_DATA) / "banking77/test.jsonl").read_text(encoding="utf-8").splitlines()[:200]
    texts = [json.loads(line)["text"] for line in lines]  # what `base` (the graph with no adapter) is checked on
    source = shared_apps(release, [str(d) for d in app_dirs.values()], [], texts, 200)
    shared = export_shared(source, workdir / "shared", quantize="int8", overwrite=True)
    report = json.loads((shared / "export_report.json").read_text())
    rows = []
    for app in source.apps:
        entry = report["apps"][app.name]
        for file, backbone_entry in report["backbones"].items():
            run = adapter_runner(graph_session(shared / file), shared / entry["adapter"], OUTPUTS[app.task])
            megabytes = round(backbone_entry["megabytes"] + entry["adapter_megabytes"], 2)
            rows.append(
                {
                    "app": app.name,
                    "form": f"shared {backbone_entry['precision']}",
                    "megabytes": megabytes,
                    "adapter_megabytes": entry["adapter_megabytes"],
                    **latency(run, app.reference),
                    **score(entry[file]),
                }
            )
    return rows, report


def disk_totals(rows: list[dict], shared: dict) -> dict[str, float]:
    """MB on a device holding all three apps, per form."""
    adapters = sum(app["adapter_megabytes"] for app in shared["apps"].values())
    totals = {
        f"{form}, 3 apps": round(sum(r["megabytes"] for r in rows if r["form"] == form), 2)
        for form in ("per-app fp32", "per-app int8")
    }
    for entry in shared["backbones"].values():
        totals[f"shared {entry['precision']}, 3 apps"] = round(entry["megabytes"] + adapters, 2)
    return totals


def print_table(rows: list[dict]) -> None:
    print(f"{'app':<10} {'form':<14} {'MB':>7} {'ms b1':>7} {'ms b32':>7}  score (pytorch -> export)")
    for r in rows:
        metric = "f1" if "f1_onnx" in r else "accuracy"
        quality = f"{r[f'{metric}_pytorch']} -> {r[f'{metric}_onnx']}" if f"{metric}_onnx" in r else ""
        mb = f"{r['megabytes']:7.1f}" if r["megabytes"] is not None else f"{'-':>7}"
        print(f"{r['app']:<10} {r['form']:<14} {mb} {r['ms_batch_1']:7.2f} {r['ms_batch_32']:7.2f}  {quality}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="outputs/demo-release")
    parser.add_argument("--workdir", default="outputs/bench-export")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="bench/results/export.json")
    parser.add_argument("--train_only", action="store_true", help="Fine-tune the apps and stop (time the rest later).")
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(options.threads)
    workdir = Path(options.workdir)
    app_dirs = train_apps(options.release, workdir)
    if options.train_only:
        return
    rows = [row for name, d in app_dirs.items() for row in per_app_rows(name, d, workdir, options.threads)]
    shared, shared_report = shared_rows(options.release, app_dirs, workdir)
    rows += shared
    totals = disk_totals(rows, shared_report)
    print_table(rows)
    print(json.dumps(totals, indent=1))
    scores = {name: json.loads((d / "mtpf_app.json").read_text())["scores"] for name, d in app_dirs.items()}
    results = {
        "release": options.release,
        "threads": options.threads,
        "timed_sentences": TIMED_SENTENCES,
        "apps": scores,
        "rows": rows,
        "disk_totals_mb": totals,
    }
    write_report(options.output, " ".join(["python", *sys.argv]), results)


if __name__ == "__main__":
    main()
