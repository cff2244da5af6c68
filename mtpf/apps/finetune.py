"""An app's own adapter, fine-tuned from a release: `python -m mtpf finetune RELEASE --task ner|classification ...`.

NER runs the very protocol `mtpf-eval` scores (`mtpf.apps.ner.train`: LoRA r=32/alpha=64 on every layer,
initialised from the release's `ner` slot, head warm-up, dev selection, seqeval on test), so an app's test F1 is
the number the evaluation suite reports for the same settings. A classification app trains the same way on the
model's sentence embedding, its LoRA initialised from the `tc` slot (`mtpf.apps.classification`). The app folder
is a standard PEFT adapter repo:

    APP/adapter_config.json, adapter_model.safetensors   LoRA + the head (`modules_to_save`)
    APP/mtpf_app.json                                    task, labels (id2label), dataset, scores, backbone
    APP/mtpf_base.json                                   SHA-256 of the backbone weights it was trained on
    APP/README.md                                        model card with the test scores
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from mtpf.apps.kinds import APP_KINDS, AppError, AppKind, TrainedApp, get_app_kind
from mtpf.io import atomic_directory, check_output_folder, update_json
from mtpf.models import is_release, load_model
from mtpf.release import BACKBONE_DIR, BASE_MARKER, backbone_digest
from mtpf.training.downstream import AdapterProtocol

logger = logging.getLogger(__name__)

APP_FILE = "mtpf_app.json"


@dataclass
class FinetuneArguments:
    """An app's own adapter from a release: `python -m mtpf finetune RELEASE --task ner|classification --data D
    --output APP` (the protocol options after it depend on --task; see --help with a --task)."""

    release: str = field(metadata={"help": "Release folder (backbone/ + adapters/): the backbone the app runs on."})
    data: str = field(
        metadata={
            "help": "NER: a local dataset name, a folder of CoNLL files (train*/dev*/test*), hf://ID[:CONFIG]. "
            "classification: a local task name, a folder of train/dev/test .jsonl or .csv (text, label), "
            "hf://ID[:CONFIG]."
        }
    )
    output: str = field(metadata={"help": "App folder to write (a standard PEFT adapter repo)."})
    task: str = field(default="ner", metadata={"help": "The app's kind (registered: ner, classification, ...)."})
    seed: int = field(default=0, metadata={"help": "Seed of the head, the LoRA init and the data order."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an app already at --output."})
    data_root: str | None = field(default=None, metadata={"help": "Where local datasets live (default: the kind's)."})
    ner_data_root: str | None = field(default=None, metadata={"help": "Deprecated: --data_root."})
    tc_data_root: str | None = field(default=None, metadata={"help": "Deprecated: --data_root."})

    def data_folder(self, kind: AppKind) -> Path:
        """Where a local dataset name is looked up: --data_root, a deprecated root, else the kind's own."""
        return Path(self.data_root or self.ner_data_root or self.tc_data_root or kind.data_root)


def finetune_app(arguments: FinetuneArguments, protocol: AdapterProtocol | None = None) -> Path:
    """Fine-tune the app's adapter on its data from the release and write the app folder atomically (the protocol:
    the kind's defaults unless given)."""
    kind = get_app_kind(arguments.task)
    release = arguments.release
    if not is_release(str(release)):
        raise AppError(f"{release}: not a release folder (no {BACKBONE_DIR}/); make one with `mtpf init` or training.")
    protocol = protocol or kind.protocol()
    if not isinstance(protocol, kind.protocol):
        raise AppError(f"--task {kind.name}: expected a {kind.protocol.__name__}, got a {type(protocol).__name__}.")
    output = check_output_folder(arguments.output, arguments.overwrite, APP_FILE, "an app", AppError)
    data_root = arguments.data_folder(kind)
    trained = kind.train(load_model(str(release)), arguments.data, str(data_root), protocol, arguments.seed)
    backbone_dir = Path(release).resolve() / BACKBONE_DIR
    with atomic_directory(output) as staging:
        save_adapter(trained, staging)
        update_json(staging / "adapter_config.json", lambda c: c.update(base_model_name_or_path=str(backbone_dir)))
        digest = backbone_digest(backbone_dir)
        (staging / BASE_MARKER).write_text(json.dumps({"backbone_sha256": digest}, indent=2) + "\n", encoding="utf-8")
        app = app_description(kind.name, trained, arguments.data, protocol, str(backbone_dir))
        app["data_root"] = str(data_root.resolve())  # where a local dataset name was read (export re-reads it)
        (staging / APP_FILE).write_text(json.dumps(app, indent=2) + "\n", encoding="utf-8")
        app_card(app).save(staging / "README.md")
    logger.info("App written to %s: %s %s", output, trained.dataset, trained.scores)
    return output


def save_adapter(trained: TrainedApp, folder: Path) -> None:
    """The adapter's files at the top of `folder` (PEFT nests a non-default adapter under its name)."""
    scratch = folder / "scratch"
    trained.model.save_pretrained(str(scratch), selected_adapters=[trained.adapter], safe_serialization=True)
    saved = scratch / trained.adapter
    for path in (saved if saved.is_dir() else scratch).iterdir():
        if path.name != "README.md":  # PEFT's generic card; ours follows
            path.rename(folder / path.name)
    shutil.rmtree(scratch)


def app_description(task: str, trained: TrainedApp, data: str, protocol: AdapterProtocol, backbone: str) -> dict:
    return {
        "task": task,
        "id2label": dict(enumerate(trained.labels)),
        "label2id": {label: i for i, label in enumerate(trained.labels)},
        "dataset": trained.dataset,
        "data": data,
        "backbone": backbone,
        "scores": trained.scores,
        "run": trained.run,
        "protocol": asdict(protocol),
    }


def read_app(app_dir: str | os.PathLike) -> dict:
    """The app's description (task, labels, ...), or an error naming the file."""
    path = Path(app_dir) / APP_FILE
    try:
        app = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AppError(f"{path}: not a readable mtpf app description ({err}).") from err
    if app.get("task") not in APP_KINDS or not isinstance(app.get("id2label"), dict):
        raise AppError(f"{path}: expected a task in {sorted(APP_KINDS)} and an id2label mapping.")
    return app


def check_app_backbone(app_dir: str | os.PathLike, digest: str, backbone_dir: str | os.PathLike) -> None:
    """An app's LoRA means something only on the backbone it was trained on (`mtpf_base.json`'s digest)."""
    path = Path(app_dir) / BASE_MARKER
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("backbone_sha256")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
        raise AppError(f"{path}: not a readable backbone marker ({err}).") from err
    if recorded != digest:
        raise AppError(f"{app_dir}: trained on another backbone than {backbone_dir} ({BASE_MARKER} differs).")


def saved_head(tensors: dict) -> tuple | None:
    """The (weight, bias) of the head an app's adapter file carries in `modules_to_save`, or None."""
    weights = {key.removeprefix("base_model.model."): value for key, value in tensors.items()}
    weight, bias = weights.get("classifier.weight"), weights.get("classifier.bias")
    return (weight.float(), bias.float()) if weight is not None and bias is not None else None


def app_card(app: dict) -> ModelCard:
    """The app's model card: what it does, its scores, and how to load it with transformers + PEFT alone."""
    kind = get_app_kind(app["task"])
    pipeline_tag, head_class, label_kind, slot, rows = (
        kind.pipeline_tag,
        kind.auto_class,
        kind.label_kind,
        kind.slot,
        kind.score_rows,
    )
    scores = app["scores"]
    data = ModelCardData(library_name="peft", pipeline_tag=pipeline_tag, tags=["mtpf", app["task"], "lora"])
    labels = ", ".join(sorted({label.split("-", 1)[-1] for label in app["id2label"].values() if label != "O"}))
    table = "\n".join(f"| {split} | {metric} | {scores[key]:.2f} |" for split, metric, key in rows)
    options = "".join(f', {key}="{value}"' for key, value in kind.pipeline_options.items())
    return ModelCard(
        f"""---
{data.to_yaml()}
---

# mtpf app: {app["task"]} on {app["dataset"]}

A LoRA adapter (r={app["protocol"]["r"]}, alpha={app["protocol"]["lora_alpha"]}) plus a linear head, fine-tuned by
`python -m mtpf finetune --task {app["task"]}` on top of the MTPF backbone `{app["backbone"]}` (initialised from its
`{slot}` task-primary slot; best dev epoch {scores["best_epoch"]:g}). {label_kind}: {labels}.

| split | metric | value |
|---|---|---|
{table}

## How to load

```python
import json
from peft import PeftModel
from transformers import {head_class}, AutoTokenizer, pipeline

app = json.load(open("APP/mtpf_app.json"))
labels = {{int(i): label for i, label in app["id2label"].items()}}
model = {head_class}.from_pretrained(
    "BACKBONE", trust_remote_code=True, num_labels=len(labels), id2label=labels,
    label2id={{label: i for i, label in labels.items()}})
model = PeftModel.from_pretrained(model, "APP")
runner = pipeline("{pipeline_tag}", model=model, tokenizer=AutoTokenizer.from_pretrained("BACKBONE"){options})
```
"""
    )
