"""The model side of `mtpf serve`: one backbone in memory, every slot and app a named PEFT adapter on it.

A batch may mix rows of different apps (`adapter_names=[...]`, `"__base__"` for none); a batch of one app's rows runs
with that adapter active instead, which costs fewer operators. The slots' and apps' linears are `FusedLoraLinear`s whose
merged weights `W + s·B·A` are cached for the most recently used adapters within a memory budget (`merged_weights_mb`):
an active adapter then costs what the backbone costs, and a mixed batch runs each app's rows against its merged weight
(`bench/serving.py`). An app evicted from the cache is merged again on its next one-app batch; a mixed batch of more
apps than the cache holds, or a budget of 0, runs PEFT's unmerged LoRA. Each app's head (a plain linear from its
`modules_to_save`) is then applied to its own rows. Served names: `base` (the backbone alone), every trained slot of the
release (`tc`, `ner`: sentence embeddings), and every app (`ner` apps: entities; `classification` apps: label + score;
both also give embeddings). Every call runs on one worker thread, so adapters can be added, removed and activated
between batches without locks.
"""

from __future__ import annotations

import copy
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file

from mtpf.apps import AppError, check_app_backbone, get_app_kind, read_app, saved_head
from mtpf.apps.kinds import RowOutput, kind_of_endpoint
from mtpf.errors import MtpfError
from mtpf.fused_lora import cached_weight_bytes, set_weight_cache, use_fused_linear
from mtpf.models import load_model
from mtpf.release import BACKBONE_DIR, backbone_digest

logger = logging.getLogger(__name__)
BASE = "base"
MERGED_WEIGHTS_MB = 256  # the default cache budget in MiB (a 2-layer MiniLM slot costs 11.25)
APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # PEFT's own names (`__base__`) cannot be taken


class ServeError(MtpfError, ValueError):
    """A request or an app that cannot be served; `status` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


@dataclass
class Served:
    """One name the server answers to."""

    name: str
    kind: str  # embedding (a slot or the base), ner or classification (an app)
    adapter: str  # PEFT adapter name, "__base__" for the backbone alone
    id2label: dict[int, str] = field(default_factory=dict)
    head: tuple[torch.Tensor, torch.Tensor] | None = None
    path: str = ""
    removed: bool = False  # set when the app is unloaded: rows still queued for it are refused, never run
    draining: bool = False  # being removed: no new requests, the queued ones are still answered

    def describe(self) -> dict:
        tasks = ["embeddings", *([] if self.kind == "embedding" else [get_app_kind(self.kind).endpoint])]
        return {
            "id": self.name,
            "object": "model",
            "kind": self.kind,
            "endpoints": tasks,
            "path": self.path,
            "labels": list(self.id2label.values()),
        }


@dataclass
class Encoded:
    """One text as the tokenizer cut it (once per request, when its tokens are counted): ids, token types, each
    token's character span and word index (entities need both)."""

    ids: list[int]
    type_ids: list[int]
    offsets: list[tuple[int, int]]
    word_ids: list[int | None]


@dataclass
class Row:
    """One text of one request: what it asks for and, after the batch, its answer."""

    served: Served
    text: str
    task: str  # embeddings, ner or classify
    tokens: int
    encoded: Encoded | None = None  # set by the HTTP layer; a row without it is encoded with its batch


class Engine:
    """The backbone with its adapters, the tokenizer, and the batched forward."""

    # Padded tokens per forward unless the operator says otherwise. A CPU forward gets slower per token beyond about
    # a thousand (attention and activations leave the caches): 1024 was the fastest budget on short, medium and long
    # texts, 1.3-2.1x the old 8192 (bench/RESULTS.md section 12).
    batch_tokens = 1024
    batch_wait_ms = 5.0  # how long a first queued row waits for company (section 12: 1 ms lost 25 % at one text)

    def __init__(self, release: str, threads: int | None = None, merged_weights_mb: float = MERGED_WEIGHTS_MB) -> None:
        if threads:
            torch.set_num_threads(threads)
        loaded = load_model(release)
        self.release, self.tokenizer = release, loaded.tokenizer
        # Counting runs on the event loop while the forward thread tokenizes: a fast tokenizer changes its
        # truncation/padding state per call and fails ("Already borrowed") when two threads share it.
        self.counter = copy.deepcopy(loaded.tokenizer)
        self.backbone_dir = Path(release) / BACKBONE_DIR
        self.digest = backbone_digest(self.backbone_dir)
        self.max_tokens = loaded.backbone.sentence_max_length(loaded.tokenizer)
        self.merged_weights_bytes = int(merged_weights_mb * 2**20)
        self.model: PeftModel | torch.nn.Module = loaded.with_slots(fused=True).eval()
        self._active: str | None = None  # the adapter PEFT has active, once a one-app batch has set it
        self._lora_layers: list[BaseTunerLayer] | None = None  # every LoRA-wrapped linear, for backbone-only batches
        self.served: dict[str, Served] = {BASE: Served(BASE, "embedding", "__base__", path=str(self.backbone_dir))}
        for slot, folder in loaded.adapters.items():
            self.served[slot] = Served(slot, "embedding", slot, path=str(folder))
        self._size_weight_cache()

    # ----- apps -----------------------------------------------------------------------------------------------

    def add_app(self, name: str, app_dir: str) -> Served:
        """Load an app (from `mtpf finetune`) as adapter `name`; it must be made for this very backbone."""
        if not APP_NAME.fullmatch(name or ""):
            raise ServeError(
                f"app name {name!r}: start with a letter or digit, then letters, digits, '-' and '_' "
                "(names starting with '_' are the server's own).",
                422,
                param="name",
            )
        if name in self.served:
            raise ServeError(f"{name!r} is already served; remove it first (DELETE /v1/apps/{name}).", 409)
        if not Path(app_dir).is_dir():
            raise ServeError(
                f"app folder {app_dir!r} not found (a folder written by `mtpf finetune`).", 404, param="path"
            )
        try:
            app = read_app(app_dir)
            check_app_backbone(app_dir, self.digest, self.backbone_dir)
        except AppError as err:
            raise ServeError(str(err), 422) from err
        try:
            config = LoraConfig.from_pretrained(app_dir)
            tensors = load_file(str(Path(app_dir) / "adapter_model.safetensors"))
        except (OSError, ValueError, TypeError, SafetensorError) as err:  # missing, truncated or broken adapter files
            raise ServeError(f"{app_dir}: not a readable PEFT adapter ({type(err).__name__}: {err}).", 422) from err
        config.modules_to_save, config.inference_mode = None, True  # the head is applied per row group, below
        lora = {key: value for key, value in tensors.items() if "lora_" in key}
        head = saved_head(tensors)
        labels = app_labels(app_dir, app, head)
        self._attach(name, use_fused_linear(config), lora)
        served = Served(name, app["task"], name, labels, head, str(app_dir))
        try:
            self._dry_run(served)
        except Exception as err:  # whatever a broken app would do to a batch, it does here, before it is served
            self.model.delete_adapter(name)
            self._active, self._lora_layers = None, None
            raise ServeError(f"{app_dir}: the app fails on a test input ({type(err).__name__}: {err}).", 422) from err
        self.served[name] = served
        self._size_weight_cache()
        logger.info("serving app %s (%s, %d labels) from %s", name, app["task"], len(labels), app_dir)
        return served

    def _dry_run(self, served: Served) -> None:
        """One forward of a test sentence through the app's adapter and head, for every endpoint it answers."""
        tasks = ["embeddings", get_app_kind(served.kind).endpoint]
        text = "A short test sentence from Paris."
        rows = [Row(served, text, task, len(self.counter(text)["input_ids"])) for task in tasks]
        for answer in self.run(rows):
            if isinstance(answer, BaseException):
                raise answer

    def _attach(self, name: str, config: LoraConfig, lora: dict[str, torch.Tensor]) -> None:
        self._active = None  # adding (or failing to add) an adapter may change which one PEFT has active
        self._lora_layers = None  # and which linears are wrapped
        if isinstance(self.model, PeftModel):
            self.model.add_adapter(name, config)
        else:
            self.model = get_peft_model(self.model, config, adapter_name=name)
        # PEFT wraps the linears an app adapts beyond the slots' layers with new modules in training mode: they would
        # form `W + s·B·A` on every forward (and apply LoRA dropout) instead of using the merged-weight cache
        self.model.eval()
        result = set_peft_model_state_dict(self.model, lora, adapter_name=name)
        if result.unexpected_keys:
            self.model.delete_adapter(name)
            raise ServeError(f"adapter {name!r}: weights for modules this backbone lacks {result.unexpected_keys[:3]}.")

    def remove_app(self, name: str) -> None:
        served = removable_app(self.served, name)
        with warnings.catch_warnings():  # PEFT picks another active adapter; the engine sets its own per batch
            warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
            self.model.delete_adapter(name)
        self._active, self._lora_layers = None, None
        served.removed = True
        del self.served[name]
        self._size_weight_cache()

    def app_folders(self) -> dict[str, str]:
        """{app name: folder} of every served app (the release's slots and base left out)."""
        return {name: served.path for name, served in self.served.items() if served.kind != "embedding"}

    def _size_weight_cache(self) -> None:
        """Let every fused layer cache as many adapters' merged weights as the budget holds (each costs at most the
        adapted linears' base weights); beyond that the least recently used is formed again when next used."""
        per_adapter = cached_weight_bytes(self.model)
        if not per_adapter:
            return
        adapters = sum(served.adapter != "__base__" for served in self.served.values())
        fits = self.merged_weights_bytes // per_adapter
        set_weight_cache(self.model, fits)
        if self.merged_weights_bytes > 0 and fits < adapters:  # 0: the operator chose PEFT's unmerged LoRA
            logger.warning(
                "merged weights of %d of %d adapters fit in the cache (%.0f MB each): the others are "
                "merged again when their turn comes (raise --merged_weights_mb)",
                fits,
                adapters,
                per_adapter / 2**20,
            )

    def lookup(self, name: str, task: str) -> Served:
        return lookup_served(self.served, name, task)

    @property
    def embedding_dimension(self) -> int:
        """The length of every vector /v1/embeddings returns (the backbone's hidden size: mean or CLS pooling)."""
        return int(self.model.config.hidden_size)

    def encode(self, texts: list[str]) -> list[Encoded]:
        """The texts' tokens, uncut (the HTTP layer refuses a text over `max_tokens` by its count)."""
        return encode_texts(self.counter, texts)

    # ----- the batched forward -------------------------------------------------------------------------------

    @torch.inference_mode()
    def run(self, rows: list[Row]) -> list[object]:
        """Answers for `rows`, in order, from one forward pass (rows of any mix of served names).

        A row of an app removed while it was queued gets a ServeError (409) as its answer instead of running.
        """
        gone = [row for row in rows if row.served.removed]
        if gone:
            live = [row for row in rows if not row.served.removed]
            answers = iter(self.run(live) if live else [])
            return [removed_error(row) if row.served.removed else next(answers) for row in rows]
        batch = {
            key: torch.from_numpy(value) for key, value in padded_batch(self.tokenizer, rows, self.max_tokens).items()
        }
        outputs = self._forward(batch, [row.served.adapter for row in rows])
        answers: list[object] = []
        for index, row in enumerate(rows):
            if row.task == "embeddings":
                answers.append(outputs.pooler_output[index].tolist())
                continue
            kind = get_app_kind(row.served.kind)
            features = outputs.last_hidden_state[index] if kind.reads_tokens else outputs.pooler_output[index]
            weight, bias = row.served.head
            logits = features @ weight.t() + bias
            encoded = row.encoded
            answers.append(
                kind.answer(RowOutput(logits, row.served.id2label, row.text, encoded.word_ids, encoded.offsets))
            )
        return answers

    def _forward(self, batch, adapters: list[str]):
        """One app's rows with its adapter active (set only when it changes), the base's with adapters off; a mix of
        adapters per row."""
        if not isinstance(self.model, PeftModel):
            return self.model(**batch)
        only = adapters[0]
        if any(adapter != only for adapter in adapters):
            return self.model(**batch, adapter_names=adapters)
        if only == "__base__":  # the backbone alone: every LoRA layer runs its base linear, no per-row gather
            return self._backbone_forward(batch)
        if self._active != only:
            self.model.set_adapter(only)
            self._active = only
        return self.model(**batch)

    def _backbone_forward(self, batch):
        """Every LoRA layer switched to its base linear for one forward. PEFT's `disable_adapter()` context does the
        same but checks the whole model's layer status first (a walk over every module, ~10 ms a call here), which
        made a small `base` batch cost more than an app's (bench/RESULTS.md section 11)."""
        if self._lora_layers is None:  # found again after an app is added or removed
            self._lora_layers = [module for module in self.model.modules() if isinstance(module, BaseTunerLayer)]
        layers = self._lora_layers
        for layer in layers:
            layer.enable_adapters(False)
        try:
            return self.model(**batch)
        finally:
            for layer in layers:
                layer.enable_adapters(True)


def encode_texts(tokenizer, texts: list[str], max_length: int | None = None) -> list[Encoded]:
    """Each text's tokens with their character spans and word indices (cut at `max_length` when one is given)."""
    cut = {"truncation": True, "max_length": max_length} if max_length else {"truncation": False}
    batch = tokenizer(texts, return_offsets_mapping=True, return_token_type_ids=True, **cut)
    return [
        Encoded(ids, types, [tuple(span) for span in spans], batch.word_ids(index))
        for index, (ids, types, spans) in enumerate(
            zip(batch["input_ids"], batch["token_type_ids"], batch["offset_mapping"], strict=True)
        )
    ]


def padded_batch(tokenizer, rows: list[Row], max_length: int) -> dict[str, np.ndarray]:
    """The rows' tokens padded to the longest row (both engines' batch): each text was tokenised once, when the
    request came in; a row without its tokens (a dry run, a test) is encoded here, cut at `max_length`."""
    missing = [row for row in rows if row.encoded is None]
    if missing:
        texts = [row.text for row in missing]
        for row, encoded in zip(missing, encode_texts(tokenizer, texts, max_length), strict=True):
            row.encoded = encoded
    longest = max(len(row.encoded.ids) for row in rows)
    ids = np.full((len(rows), longest), tokenizer.pad_token_id or 0, dtype=np.int64)
    mask, types = np.zeros_like(ids), np.zeros_like(ids)
    for index, row in enumerate(rows):
        length = len(row.encoded.ids)
        ids[index, :length], mask[index, :length], types[index, :length] = row.encoded.ids, 1, row.encoded.type_ids
    batch = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in tokenizer.model_input_names:  # BERT reads them; DistilBERT has none
        batch["token_type_ids"] = types
    return batch


def removable_app(served_names: dict[str, Served], name: str) -> Served:
    """The served app `name`, if it is one that may be removed (a release's slot or the base is not)."""
    served = served_names.get(name)
    if served is None:
        raise ServeError(f"no app named {name!r}; served: {sorted(served_names)}.", 404)
    if served.kind == "embedding":
        raise ServeError(f"{name!r} is part of the release, not an app; it cannot be removed.", 409)
    return served


def lookup_served(served_names: dict[str, Served], name: str, task: str) -> Served:
    """The served model a request names, if it can answer `task` (embeddings, ner, classify); else a clear 4xx."""
    served = served_names.get(name)
    if served is None or served.removed:
        raise ServeError(f"model {name!r} is not served; served: {sorted(served_names)}.", 404, param="model")
    if served.draining:
        raise ServeError(f"model {name!r} is being removed; it takes no new requests.", 409, param="model")
    needs = kind_of_endpoint(task)
    if needs is not None and served.kind != needs.name:
        serves = ", ".join(f"/v1/{endpoint}" for endpoint in served.describe()["endpoints"])
        what = "an embedding model" if served.kind == "embedding" else f"a {served.kind} app"
        raise ServeError(
            f"model {name!r} is {what}; it cannot answer /v1/{task} (it answers {serves}).",
            404,
            param="model",
            code="model_not_found",
        )
    return served


def removed_error(row: Row) -> ServeError:
    return ServeError(f"model {row.served.name!r} was removed while this request was queued.", 409, param="model")


def app_labels(app_dir: str, app: dict, head: tuple[torch.Tensor, torch.Tensor] | None) -> dict[int, str]:
    """The app's labels, checked against its head: one label per head output, ids 0..n-1."""
    if head is None:
        raise ServeError(f"{app_dir}: the adapter has no saved head (classifier weight and bias).", 422)
    try:
        labels = {int(i): str(label) for i, label in app["id2label"].items()}
    except (TypeError, ValueError) as err:
        raise ServeError(f"{app_dir}: id2label keys must be label ids ({err}).", 422) from err
    outputs = head[0].shape[0]
    if sorted(labels) != list(range(outputs)):
        raise ServeError(
            f"{app_dir}: the head has {outputs} outputs but id2label names ids {sorted(labels)}; "
            "each output needs exactly one label.",
            422,
        )
    return labels
