"""`mtpf serve RELEASE --backend onnx --onnx EXPORT_DIR`: the same HTTP API answered by ONNX Runtime.

EXPORT_DIR is a shared-backbone export (`mtpf export RELEASE --shared [APP ...] --slot tc --output EXPORT_DIR`):
one `backbone.onnx` (or `backbone.int8.onnx`) whose LoRA and head are inputs, and one onnxruntime adapter file per
app or slot. Every served name is `base` (the graph's zero LoRA: the backbone alone) or an entry of the export's
report; each of them (`base` too: the graph with no adapter, checked against the plain backbone) whose fidelity
check was not accepted for the chosen precision is refused at load, and a request for it says why. A batch runs one
session call per adapter among its rows (onnxruntime activates one adapter set per run), each padded to its own
longest row; the answers are post-processed exactly as the PyTorch engine does.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from transformers import AutoTokenizer

from configuration_mtpf import MtpfConfig
from mtpf.apps import get_app_kind
from mtpf.apps.kinds import RowOutput
from mtpf.export.shared import OUTPUTS, SHARED_REPORT
from mtpf.release import BACKBONE_DIR
from mtpf.serve.engine import (
    BASE,
    Encoded,
    Row,
    Served,
    ServeError,
    encode_texts,
    lookup_served,
    padded_batch,
    removable_app,
    removed_error,
)

logger = logging.getLogger(__name__)
PRECISIONS = {"fp32": "backbone.onnx", "int8": "backbone.int8.onnx"}


class OnnxEngine:
    """The PyTorch `Engine`'s interface (served names, lookup, counting, the batched `run`) on ONNX Runtime."""

    batch_tokens = 512  # ONNX Runtime's fastest budget per session call here (bench/RESULTS.md section 12)
    batch_wait_ms = 1.0  # its forward costs less than PyTorch's: 5 ms of waiting lost 10-26 % at one text (section 12)

    def __init__(self, release: str, export_dir: str, precision: str = "fp32", threads: int | None = None) -> None:
        import onnxruntime as ort

        export = Path(export_dir)
        report = self._report(export)
        if precision not in PRECISIONS or PRECISIONS[precision] not in report.get("backbones", {}):
            present = sorted(report.get("backbones", {}))
            raise ServeError(
                f"{export}: no {precision} backbone in this export (it has {present}); "
                "export with --quantize int8 for int8."
            )
        self.release, self.precision = release, precision
        self.backbone_file = PRECISIONS[precision]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # the LoRA inputs' zero defaults are meant to be overridden: no warning
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(export / self.backbone_file), options, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = AutoTokenizer.from_pretrained(str(export / "tokenizer"))
        self.counter = copy.deepcopy(self.tokenizer)  # counting runs on another thread than the forward
        config = MtpfConfig.from_pretrained(str(Path(release) / BACKBONE_DIR))
        self.max_tokens = int(config.max_seq_length or self.tokenizer.model_max_length)
        self.embedding_dimension = int(config.hidden_size)
        self.served: dict[str, Served] = {}
        self.refused: dict[str, str] = {}
        base_verdict = report.get("base", {}).get(self.backbone_file)
        if base_verdict is None:
            self.refused[BASE] = "this export has no fidelity check of the plain backbone (export it again)"
        elif not base_verdict.get("accepted"):
            self.refused[BASE] = f"its {precision} graph was not accepted by the fidelity check ({base_verdict})"
        else:
            self.served[BASE] = Served(BASE, "embedding", "__base__", path=str(export))
        self._runs: dict[str, tuple[object, object]] = {}  # name -> (LoraAdapter, RunOptions); both must live on
        for name, entry in report.get("apps", {}).items():
            self._load(name, entry, export)
        logger.info("ONNX backend (%s, %s): serving %s", self.backbone_file, precision, sorted(self.served))

    @staticmethod
    def _report(export: Path) -> dict:
        path = export / SHARED_REPORT
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ServeError(
                f"{path}: not a shared-backbone export report ({err}); make one with `mtpf export "
                "RELEASE --shared [APP ...] --slot tc --output DIR`."
            ) from err
        if report.get("outputs") != OUTPUTS:
            raise ServeError(f"{path}: not a shared-backbone export (its outputs are {report.get('outputs')}).")
        return report

    def _load(self, name: str, entry: dict, export: Path) -> None:
        """Serve one app of the export if its fidelity check for this precision was accepted; else say why not."""
        import onnxruntime as ort

        verdict = entry.get(self.backbone_file, {})
        if not verdict.get("accepted"):
            self.refused[name] = f"its {self.precision} export was not accepted by the fidelity check ({verdict})"
            logger.warning("app %s refused: %s", name, self.refused[name])
            return
        adapter = ort.LoraAdapter()
        adapter.Load(str(export / entry["adapter"]))
        run_options = ort.RunOptions()
        run_options.add_active_adapter(adapter)
        self._runs[name] = (adapter, run_options)
        labels = {int(i): label for i, label in entry.get("id2label", {}).items()}
        self.served[name] = Served(name, entry["task"], name, labels, None, str(export / entry["adapter"]))

    # ----- what the HTTP layer asks -----------------------------------------------------------------------------

    def lookup(self, name: str, task: str) -> Served:
        if name in self.refused:
            raise ServeError(f"model {name!r} is not served: {self.refused[name]}.", 404, param="model")
        return lookup_served(self.served, name, task)  # the same rules and messages as the PyTorch engine

    def encode(self, texts: list[str]) -> list[Encoded]:
        """The texts' tokens, uncut (the HTTP layer refuses a text over `max_tokens` by its count)."""
        return encode_texts(self.counter, texts)

    def app_folders(self) -> dict[str, str]:
        return {}  # apps come from the export, not from the app registry

    def add_app(self, name: str, app_dir: str) -> Served:
        raise ServeError(
            "the ONNX backend serves the apps of its export; export the app with the others "
            "(`mtpf export RELEASE --shared APP ... --output DIR`) and restart.",
            409,
        )

    def remove_app(self, name: str) -> None:
        served = removable_app(self.served, name)
        served.removed = True
        del self.served[name]
        self._runs.pop(name, None)

    # ----- the batched forward ---------------------------------------------------------------------------------

    def run(self, rows: list[Row]) -> list[object]:
        """Answers for `rows`, in order: one session call per adapter among them."""
        answers: list[object] = [None] * len(rows)
        groups: dict[str, list[int]] = {}
        for index, row in enumerate(rows):
            if row.served.removed:
                answers[index] = removed_error(row)
            else:
                groups.setdefault(row.served.name, []).append(index)
        for name, indices in groups.items():
            for index, answer in zip(indices, self._run_one_adapter(name, [rows[i] for i in indices]), strict=True):
                answers[index] = answer
        return answers

    def _run_one_adapter(self, name: str, rows: list[Row]) -> list[object]:
        batch = padded_batch(self.tokenizer, rows, self.max_tokens)
        feeds = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        run_options = self._runs[name][1] if name in self._runs else None
        # All three outputs every time: onnxruntime's inference builds run the whole graph whatever the fetch list
        # (microsoft/onnxruntime#16483; checked on 1.32: a failing node off the fetched path fails the run), so a
        # shorter list would save only the copies.
        names = list(OUTPUTS.values())
        outputs = dict(zip(names, self.session.run(names, feeds, run_options), strict=True))
        answers: list[object] = []
        for index, row in enumerate(rows):
            if row.task == "embeddings":
                answers.append(outputs[OUTPUTS["embedding"]][index].tolist())
                continue
            kind = get_app_kind(row.served.kind)
            logits = torch.from_numpy(outputs[kind.onnx_output][index])
            encoded = row.encoded
            answers.append(
                kind.answer(RowOutput(logits, row.served.id2label, row.text, encoded.word_ids, encoded.offsets))
            )
        return answers
