"""The registry of app kinds: what an app does (tag entities, classify sentences), as one entry per kind.

A kind owns what differs between apps: its training protocol and data, its head class, its model-card facts, its
ONNX output and how an export of it is checked, the endpoint that serves it and what one input of a request is (a
text, or e.g. a pair of texts that the kind turns into the one text its model reads). `finetune`, `export` and
`serve` ask the registry and never branch on a kind's name; an unknown kind is an error that lists the registered
ones (as `mtpf.tasks` does for pre-finetuning).

    from mtpf.apps.kinds import register_app_kind, get_app_kind
    register_app_kind(AppKind(name="ner", ...))
    get_app_kind("ner").train(loaded, data, data_root, protocol, seed)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from peft import PeftModel

from mtpf.errors import MtpfError
from mtpf.training.downstream import AdapterProtocol


class AppError(MtpfError, ValueError):
    """An app that cannot be built or loaded; the message names the file or the argument."""


@dataclass
class TrainedApp:
    """What one kind's protocol produced: the model to save (its adapter's name) and what the card reports."""

    adapter: str
    model: PeftModel
    dataset: str
    labels: list[str]
    scores: dict[str, float]
    run: dict


@dataclass
class RowOutput:
    """What one served row's answer is made of: its logits (per token for a `token_logits` kind, else per sentence),
    the app's labels, and the text with each token's word and character span."""

    logits: Any  # torch.Tensor [tokens, labels] or [labels]
    id2label: dict[int, str]
    text: str
    word_ids: list[int | None]
    offsets: Any  # [tokens, 2] character spans


@dataclass(frozen=True)
class AppKind:
    """One kind of app and everything about it that the rest of mtpf asks for."""

    name: str
    protocol: type[AdapterProtocol]  # its fine-tuning settings (command-line options of `mtpf finetune`)
    data_root: str  # where its local datasets live by default
    # (loaded model, data spec, data root, protocol, seed) -> the trained adapter and its scores
    train: Callable[[Any, str, str, AdapterProtocol, int], TrainedApp]
    # (the app's description, n) -> the first n test texts and their gold answers (export's fidelity check)
    test_texts: Callable[[dict, int], tuple[list[str], list]]
    head_class: str  # the modeling_mtpf class that carries its head
    slot: str  # the release slot that initialises its LoRA
    onnx_output: str  # what its graph returns: token_logits or sentence_logits
    endpoint: str  # the HTTP endpoint that answers it: /v1/<endpoint>
    answer: Callable[[RowOutput], dict]  # one row's answer from its logits (both serving backends call it)
    # the export's quality check: (gold, PyTorch outputs, ONNX outputs, encodings, id2label), outputs and encodings
    # per batch -> {"<metric>_pytorch", "<metric>_onnx", "<metric>_drop"} (int8 is accepted when no drop exceeds
    # mtpf.export.onnx.INT8_MAX_F1_DROP points)
    compare_outputs: Callable[[list, list, list, list, dict], dict]
    pipeline_tag: str  # model cards and transformers' pipeline
    label_kind: str  # how a card names its labels
    score_rows: tuple[tuple[str, str, str], ...]  # card rows: (split, metric, key in the app's scores)
    pipeline_options: dict = field(default_factory=dict)  # e.g. aggregation_strategy for a tagger
    # (tokenizer, texts, gold, max_length) -> one batch of the export's check sentences (default: the texts as is)
    encode_check: Callable[[Any, list[str], list, int], Any] | None = None
    input_type: Any = str  # one input of a request (a pydantic type): a text by default
    text_of: Callable[[Any], str] = str  # the text the model reads for one input (a pair joined, for instance)

    def head_model_class(self) -> type:
        import modeling_mtpf

        return getattr(modeling_mtpf, self.head_class)

    @property
    def reads_tokens(self) -> bool:
        """Whether its head reads every token (a tagger) rather than the sentence embedding."""
        return self.onnx_output == "token_logits"

    @property
    def auto_class(self) -> str:
        return self.head_class.replace("Mtpf", "AutoModel", 1)


APP_KINDS: dict[str, AppKind] = {}


def register_app_kind(kind: AppKind) -> AppKind:
    """Add a kind under its name; another kind under a taken name, or an endpoint already served, is an error."""
    if APP_KINDS.get(kind.name, kind) is not kind:
        raise ValueError(f"An app kind named {kind.name!r} is already registered.")
    taken = {other.endpoint: other.name for other in APP_KINDS.values() if other.name != kind.name}
    if kind.endpoint in {*taken, "embeddings", "models", "apps"}:
        raise ValueError(f"App kind {kind.name!r}: endpoint /v1/{kind.endpoint} is already taken.")
    APP_KINDS[kind.name] = kind
    return kind


def get_app_kind(name: str) -> AppKind:
    if name not in APP_KINDS:
        raise AppError(f"Unknown app kind {name!r}; registered kinds: {sorted(APP_KINDS)}.")
    return APP_KINDS[name]


def kind_of_endpoint(endpoint: str) -> AppKind | None:
    """The kind /v1/<endpoint> answers (None: an endpoint of no app kind, such as embeddings)."""
    return next((kind for kind in APP_KINDS.values() if kind.endpoint == endpoint), None)
