"""Device export: one app (or a release's slot) as one ONNX graph, fp32 and int8, with its fidelity measured.

    python -m mtpf export APP --output DIR [--quantize int8]                 # app: token or class logits
    python -m mtpf export RELEASE --slot tc --output DIR [--quantize int8]   # sentence embeddings (normalised)

The LoRA is merged in fp32 first (`merge_and_unload`), the head and pooling are inside the graph, so a device runs
one session: `input_ids`, `attention_mask` in; out come `logits` [batch, tokens, labels] for NER (decode: argmax
per token, keep each word's first sub-token, map ids through `id2label` in `export_report.json`), `logits`
[batch, classes] for a classification app, or `sentence_embedding` [batch, hidden] for a slot.

Export is `torch.onnx.export(dynamo=True)`; int8 is onnxruntime's `quantize_dynamic` (per-channel QInt8 weights).
Every artifact is compared with PyTorch on real sentences and the verdict is written to `DIR/export_report.json`:
max |Δ|, and the entity F1 (NER), the accuracy (classification) or the cosine to PyTorch's embedding (slot). An
int8 graph is accepted only within 1 point of F1 or accuracy / cosine ≥ 0.99; otherwise it is retried with the
head and the last layer kept in fp32 (`nodes_to_exclude`), and the report says what was kept and whether that
passed.
"""

from __future__ import annotations

import ast
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from mtpf.apps.kinds import AppKind
from mtpf.errors import MtpfError
from mtpf.io import atomic_directory, atomic_write_text, check_output_folder

logger = logging.getLogger(__name__)
T = TypeVar("T")

REPORT = "export_report.json"
INT8_MAX_F1_DROP = 1.0  # points of entity F1 (NER) or of accuracy (classification)
INT8_MIN_COSINE = 0.99
FP32_MAX_ABS_DIFF = 1e-3


class ExportError(MtpfError, ValueError):
    """Something that cannot be exported; the message names the folder or the option."""


@dataclass
class Exportable:
    """A model in fp32 with its head and pooling inside, ready to trace, plus what checking it needs."""

    module: nn.Module  # forward(input_ids, attention_mask) -> the one output
    tokenizer: object
    output_name: str  # "logits" (an app) or "sentence_embedding" (a slot)
    texts: list[str]  # real sentences to compare on (NER: the words of `gold` joined)
    gold: list = field(default_factory=list)  # what the app's kind scores against (NER: tagged sentences)
    id2label: dict[int, str] = field(default_factory=dict)
    max_length: int = 128
    kind: AppKind | None = None  # an app's kind: it encodes the check sentences and scores both outputs


class _Outputs(nn.Module):
    """input_ids, attention_mask -> one tensor: token logits of a tagger or the sentence embedding of an encoder."""

    def __init__(self, model: nn.Module, output: str) -> None:
        super().__init__()
        self.model, self.output = model, output

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return outputs.logits if self.output == "logits" else outputs.pooler_output


def exportable_app(app_dir: str | os.PathLike, backbone: str | None = None, sentences: int = 200) -> Exportable:
    """An app (from `mtpf finetune`) merged into its backbone's head model: token logits (NER) or class logits."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from mtpf.apps import check_app_backbone, get_app_kind, read_app
    from mtpf.release import backbone_digest

    app = read_app(app_dir)
    backbone = backbone or app["backbone"]
    if not (Path(backbone) / "model.safetensors").is_file():
        raise ExportError(f"--backbone {backbone}: not a release backbone folder (no model.safetensors).")
    check_app_backbone(app_dir, backbone_digest(Path(backbone)), backbone)  # before any weight is loaded
    labels = {int(i): label for i, label in app["id2label"].items()}
    kind = get_app_kind(app["task"])
    model = kind.head_model_class().from_pretrained(
        backbone, num_labels=len(labels), id2label=labels, label2id={v: k for k, v in labels.items()}
    )
    merged = PeftModel.from_pretrained(model, str(app_dir)).merge_and_unload().eval()
    texts, gold = kind.test_texts(app, sentences)
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    return Exportable(
        _Outputs(merged, "logits").eval(),
        tokenizer,
        "logits",
        texts,
        gold,
        labels,
        int(app["protocol"]["max_length"]),
        kind,
    )


def exportable_slot(release: str, slot: str | None, texts: list[str]) -> Exportable:
    """A release's backbone with `slot` merged (None: the backbone alone): its normalised sentence embedding."""
    from mtpf.models import load_model

    loaded = load_model(release)
    if slot is not None and slot not in loaded.adapters:
        raise ExportError(f"{release}: no trained slot {slot!r}; it has {sorted(loaded.adapters)}.")
    encoder = loaded.encoder_for(slot) if slot else loaded.fresh_backbone()
    encoder = encoder.to("cpu").eval()
    length = encoder.sentence_max_length(loaded.tokenizer)
    return Exportable(
        _Outputs(encoder, "sentence_embedding").eval(), loaded.tokenizer, "sentence_embedding", texts, max_length=length
    )


def export_onnx(exportable: Exportable, path: Path) -> Path:
    """Trace with the dynamo exporter, batch and sequence length dynamic."""
    example = _encode(exportable, 0, 2)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=exportable.max_length)
    dims = {"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}}
    with torch.no_grad():
        torch.onnx.export(
            exportable.module,
            (example["input_ids"], example["attention_mask"]),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=[exportable.output_name],
            dynamic_shapes=dims,
            dynamo=True,
            external_data=False,
        )
    return path


def quantize_int8(source: Path, target: Path, nodes_to_exclude: list[str] | None = None) -> Path:
    """Dynamic int8 (per-channel QInt8 weights) of a copy of `source` without its `value_info`: the dynamo
    exporter's recorded shapes can contradict onnx's own inference after a Gemm head (`Inferred shape and existing
    shape differ`), which stops onnxruntime's quantizer; the shapes are re-inferred from the graph anyway."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source))
    del model.graph.value_info[:]
    plain = target.with_name(f"{target.stem}.no-value-info.onnx")
    onnx.save(model, str(plain))
    try:
        quantize_dynamic(
            str(plain),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=nodes_to_exclude or [],
        )
    finally:
        plain.unlink(missing_ok=True)
    return target


def nodes_of_modules(path: Path, prefixes: list[str]) -> list[str]:
    """Names of the MatMul/Gemm nodes that the dynamo exporter traced inside modules whose path starts with one of
    `prefixes` (from each node's `pkg.torch.onnx.name_scopes`)."""
    import onnx

    names = []
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        scopes = {p.key: p.value for p in node.metadata_props}.get("pkg.torch.onnx.name_scopes")
        module = ast.literal_eval(scopes)[-2] if scopes else ""
        if any(module.removeprefix("model.").startswith(prefix) for prefix in prefixes):
            names.append(node.name)
    return names


def int8_fallbacks(config, scope: str = "") -> list[tuple[str, list[str]]]:
    """The retries of an int8 graph that fails its check, each keeping more of it in fp32: first the FFN output
    projection of every layer (its inputs carry the outlier activations that per-tensor dynamic quantisation of
    activations handles worst: Bondarenko et al., 2021, "Understanding and Overcoming the Challenges of Efficient
    Transformer Quantization"), then also the whole last layer. `scope` prefixes the backbone's module path in the
    traced graph. Any family: BERT's `encoder.layer.N.output.dense`, DistilBERT's `transformer.layer.N.ffn.lin2`."""
    from configuration_mtpf import backbone_layout

    layout = backbone_layout(config.backbone_config.model_type)
    layers = f"{scope}backbone.{layout['layers']}"
    ffn_out = [f"{layers}.{index}.{layout['modules']['mlp_out']}" for index in range(config.num_layers)]
    return [("ffn_output", ffn_out), ("ffn_output+last_layer", [*ffn_out, f"{layers}.{config.num_layers - 1}"])]


def quantize_down_the_ladder(
    fp32: Path, int8: Path, rungs: Iterable[tuple[str, list[str]]], check: Callable[[], T], passes: Callable[[T], bool]
) -> list[tuple[str, list[str], T]]:
    """Quantise `fp32` into `int8` with nothing kept in fp32, then with each rung's nodes kept (`int8_fallbacks`),
    until the graph `passes` its `check`: every try in order as (rung, nodes kept in fp32, check); the last is the
    graph left at `int8`. `rungs` is consumed lazily: a rung's nodes are looked up only when it is needed."""
    tries = []
    for step, kept in itertools.chain([("nothing", [])], rungs):
        quantize_int8(fp32, int8, nodes_to_exclude=kept)
        tries.append((step, kept, check()))
        if passes(tries[-1][2]):
            break
    return tries


def onnx_runner(path: Path) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """The graph's one output for `input_ids`, `attention_mask` feeds, on onnxruntime's CPU provider."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)[0]


def fidelity(exportable: Exportable, path: Path | Callable, batch_size: int = 32) -> dict:
    """Compare an ONNX graph (its path, or a runner of feeds -> output) with PyTorch on the real sentences: max |Δ|
    (over real tokens), then an app's own quality on both (its kind's `compare_outputs`: NER entity F1,
    classification accuracy, ...) or, for a slot's embedding, the cosine of both vectors."""
    run = onnx_runner(path) if isinstance(path, Path) else path
    references, outputs, encodings = [], [], []
    for start in range(0, len(exportable.texts), batch_size):
        batch = _encode(exportable, start, start + batch_size)
        with torch.no_grad():
            references.append(exportable.module(batch["input_ids"], batch["attention_mask"]).numpy())
        outputs.append(run({k: batch[k].numpy() for k in ("input_ids", "attention_mask")}))
        encodings.append(batch)
    diffs = [_max_abs_diff(r, o, e["attention_mask"].numpy()) for r, o, e in zip(references, outputs, encodings)]
    report = {"max_abs_diff": max(diffs), "sentences": len(exportable.texts)}
    if exportable.kind is None:
        return report | _cosines(references, outputs)
    return report | exportable.kind.compare_outputs(
        exportable.gold, references, outputs, encodings, exportable.id2label
    )


def _max_abs_diff(reference: np.ndarray, got: np.ndarray, mask: np.ndarray) -> float:
    """The largest difference, over real tokens only for per-token outputs (padding is noise)."""
    difference = np.abs(got - reference)
    return float((difference[mask.astype(bool)] if difference.ndim == 3 else difference).max())


def _cosines(references: list[np.ndarray], outputs: list[np.ndarray]) -> dict:
    reference, got = np.concatenate(references), np.concatenate(outputs)
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1)
    cosines = (got * reference).sum(axis=1) / np.maximum(norms, 1e-12)
    return {"min_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean())}


def _encode(exportable: Exportable, start: int, end: int):
    """A batch of the check sentences, as the app's kind encodes them (NER: by gold words, so that word ids align
    with the tags), else the plain texts."""
    if exportable.kind is not None and exportable.kind.encode_check is not None:
        return exportable.kind.encode_check(
            exportable.tokenizer, exportable.texts[start:end], exportable.gold[start:end], exportable.max_length
        )
    return exportable.tokenizer(
        exportable.texts[start:end],
        padding=True,
        truncation=True,
        max_length=exportable.max_length,
        return_tensors="pt",
    )


def accepted(report: dict, int8: bool) -> bool:
    """fp32: PyTorch's outputs to within FP32_MAX_ABS_DIFF. int8: an app loses at most INT8_MAX_F1_DROP points of
    each of its kind's metrics (the `*_drop` entries), a slot keeps a cosine of INT8_MIN_COSINE to PyTorch."""
    if not int8:
        return bool(report["max_abs_diff"] < FP32_MAX_ABS_DIFF)
    drops = [value for key, value in report.items() if key.endswith("_drop")]
    if drops:
        return all(drop <= INT8_MAX_F1_DROP for drop in drops)
    return bool(report["min_cosine"] >= INT8_MIN_COSINE)


def quantize_app_checked(exportable: Exportable, fp32: Path, int8: Path) -> dict:
    """The int8 graph and its check; a refused one is quantised again down `int8_fallbacks` (with the head in fp32),
    the refused tries kept in the entry."""
    fallbacks = int8_fallbacks(exportable.module.model.config)
    rungs = ((step, nodes_of_modules(fp32, ["classifier", *prefixes])) for step, prefixes in fallbacks)
    tries = quantize_down_the_ladder(
        fp32, int8, rungs, lambda: fidelity(exportable, int8), lambda check: accepted(check, int8=True)
    )
    entries = [
        {"precision": "int8", "kept_fp32": step, "nodes_kept_fp32": kept, **check} for step, kept, check in tries
    ]
    return entries[-1] | {"refused_tries": entries[:-1], "accepted": accepted(entries[-1], int8=True)}


def export(
    exportable: Exportable,
    output: str | os.PathLike,
    *,
    quantize: str | None = None,
    overwrite: bool = False,
    source: str = "",
) -> Path:
    """Write DIR/model.onnx (fp32) and, with `quantize="int8"`, DIR/model.int8.onnx, plus DIR/export_report.json.
    An int8 graph that fails its check is quantised again with more of it kept in fp32 (`int8_fallbacks`)."""
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize {quantize!r}: only int8 is supported.")
    output = check_output_folder(output, overwrite, REPORT, "an export", ExportError)
    with atomic_directory(output) as staging:
        fp32 = export_onnx(exportable, staging / "model.onnx")
        artifacts = {"model.onnx": {"precision": "fp32", **fidelity(exportable, fp32)}}
        artifacts["model.onnx"]["accepted"] = accepted(artifacts["model.onnx"], int8=False)
        if quantize == "int8":
            artifacts["model.int8.onnx"] = quantize_app_checked(exportable, fp32, staging / "model.int8.onnx")
        for name, entry in artifacts.items():
            entry["megabytes"] = round((staging / name).stat().st_size / 2**20, 2)
        report = {
            "source": source,
            "inputs": ["input_ids", "attention_mask"],
            "output": exportable.output_name,
            "max_length": exportable.max_length,
            "id2label": {str(k): v for k, v in exportable.id2label.items()},
            "thresholds": {
                "fp32_max_abs_diff": FP32_MAX_ABS_DIFF,
                "int8_max_f1_drop": INT8_MAX_F1_DROP,
                "int8_min_cosine": INT8_MIN_COSINE,
            },
            "artifacts": artifacts,
        }
        atomic_write_text(staging / REPORT, json.dumps(report, indent=2) + "\n")
        exportable.tokenizer.save_pretrained(str(staging / "tokenizer"))
    for name, entry in artifacts.items():
        logger.info("%s: %s (%s)", name, "accepted" if entry["accepted"] else "NOT accepted", entry)
    return output
