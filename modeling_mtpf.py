"""MTPF models: one shared BERT-like backbone, task-primary LoRA slots attached with PEFT, and task heads.

Self-contained remote-code file (torch/transformers, peft only inside `load_task_adapters`), so
`AutoModel.from_pretrained(folder, trust_remote_code=True)` works without the mtpf package.

Ladder: MtpfPreTrainedModel -> MtpfModel (token + sentence embeddings) -> MtpfLinearHeadModel (MtpfModel plus a
linear classifier, same module names) -> MtpfForTokenClassification / MtpfForSequenceClassification.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

try:  # relative when loaded as remote code or from a package, absolute when installed as a top-level module
    from .configuration_mtpf import MtpfConfig
except ImportError:
    from configuration_mtpf import MtpfConfig

AUTO_MAP = {
    "AutoConfig": "configuration_mtpf.MtpfConfig",
    "AutoModel": "modeling_mtpf.MtpfModel",
    "AutoModelForTokenClassification": "modeling_mtpf.MtpfForTokenClassification",
    "AutoModelForSequenceClassification": "modeling_mtpf.MtpfForSequenceClassification",
}
PEFT_PREFIX = "base_model.model."


def mean_pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token embeddings that the attention mask keeps (padding excluded)."""
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    return (token_embeddings * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def max_pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over the tokens that the attention mask keeps."""
    padding = attention_mask.unsqueeze(-1) == 0
    return token_embeddings.masked_fill(padding, torch.finfo(token_embeddings.dtype).min).max(dim=1).values


def sentence_embedding(
    token_embeddings: torch.Tensor, attention_mask: torch.Tensor, pooling: str, normalize: bool
) -> torch.Tensor:
    """The sentence embedding as sentence-transformers' Pooling (+ Normalize) modules compute it."""
    if pooling == "cls":
        pooled = token_embeddings[:, 0]
    elif pooling == "max":
        pooled = max_pool(token_embeddings, attention_mask)
    else:
        pooled = mean_pool(token_embeddings, attention_mask)
    return nn.functional.normalize(pooled, p=2, dim=-1) if normalize else pooled


class MtpfPreTrainedModel(PreTrainedModel):
    config_class = MtpfConfig
    base_model_prefix = "mtpf"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: MtpfConfig, *inputs: Any, **kwargs: Any) -> None:
        super().__init__(config, *inputs, **kwargs)
        self.config.auto_map = dict(AUTO_MAP)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = getattr(self.config.backbone_config, "initializer_range", 0.02)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """Load safetensors weights only (never pickle), naming the folder when the file is unreadable.

        With `config.active_slot` set (e.g. `active_slot="tc"` passed here, or sentence-transformers'
        `config_kwargs`), that slot's trained adapter is merged into the loaded weights.
        """
        kwargs.setdefault("use_safetensors", True)
        try:
            model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as err:
            raise OSError(
                f"Could not read the weights in {pretrained_model_name_or_path}: the safetensors file is "
                f"corrupted ({err})."
            ) from err
        slot = getattr(model.config, "active_slot", None)
        return model.merge_slot(slot) if slot else model


class MtpfModel(MtpfPreTrainedModel):
    """The shared encoder: token embeddings (`last_hidden_state`) plus the sentence embedding (`pooler_output`:
    `config.pooling`, L2-normalised when `config.normalize`, exactly as sentence-transformers computes it)."""

    def __init__(self, config: MtpfConfig) -> None:
        super().__init__(config)
        self._build_backbone(config)
        self.post_init()

    def _build_backbone(self, config: MtpfConfig) -> None:
        if config.backbone_config is None:
            raise ValueError("MtpfConfig has no backbone_config: build it with MtpfConfig.from_backbone(...).")
        self.backbone = AutoModel.from_config(config.backbone_config)
        self._backbone_takes_token_types = "token_type_ids" in inspect.signature(self.backbone.forward).parameters

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    def pool(self, token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The sentence embedding of `config`: its pooling, L2-normalised when `config.normalize`."""
        normalize = getattr(self.config, "normalize", True)
        return sentence_embedding(token_embeddings, attention_mask, self.config.pooling, normalize)

    def sentence_max_length(self, tokenizer: Any) -> int:
        """Sub-tokens per text for sentence embeddings: `config.max_seq_length`, else the tokenizer's limit,
        never more than the backbone's position embeddings."""
        limits = [getattr(self.config, "max_seq_length", None), getattr(tokenizer, "model_max_length", None)]
        limits.append(getattr(self.config.backbone_config, "max_position_embeddings", None))
        return min(int(x) for x in limits if x is not None and 0 < int(x) < 1_000_000)

    @torch.inference_mode()
    def encode(
        self, texts: str | list[str], tokenizer: Any = None, batch_size: int = 32, max_length: int | None = None
    ) -> torch.Tensor:
        """Sentence embeddings of `texts`, in order (float32, on the CPU): the one definition that training,
        evaluation, serving and sentence-transformers share (`pooler_output` at `sentence_max_length`).

        Whatever adapter is active applies: wrap in PEFT, `set_adapter("tc")`, then call `encode`. `max_length`
        only lowers the length limit. Texts are batched by length, so padding stays small.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        tokenizer = tokenizer if tokenizer is not None else self._own_tokenizer()
        limit = self.sentence_max_length(tokenizer)
        limit = min(limit, max_length) if max_length else limit
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        device = next(self.parameters()).device
        embeddings = torch.zeros(len(texts), self.config.hidden_size)
        was_training = self.training
        self.eval()
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in rows], padding=True, truncation=True, max_length=limit, return_tensors="pt"
            ).to(device)
            embeddings[rows] = self._encoder_outputs(batch).pooler_output.float().cpu()
        self.train(was_training)
        return embeddings

    def _encoder_outputs(self, batch: Any) -> BaseModelOutputWithPooling:
        """The encoder's outputs, also for a head class (whose own forward returns logits)."""
        if type(self).forward is MtpfModel.forward:
            return self(**batch)  # through __call__, so hooks (device placement, ...) run
        return MtpfModel.forward(self, **batch)

    def _own_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        if getattr(self, "_tokenizer", None) is None:
            source = str(self.config._name_or_path or "")
            if not source:
                raise ValueError("This model was not loaded from a folder or Hub id: pass encode(..., tokenizer=...).")
            # the folder's config names this very remote code, already running: trusting it again adds nothing
            self._tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=True)
        return self._tokenizer

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling:
        backbone_inputs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "inputs_embeds": inputs_embeds,
            "output_hidden_states": output_hidden_states,
            "output_attentions": output_attentions,
        }
        if token_type_ids is not None and self._backbone_takes_token_types:
            backbone_inputs["token_type_ids"] = token_type_ids
        outputs = self.backbone(**backbone_inputs, return_dict=True)
        tokens = outputs.last_hidden_state
        if attention_mask is None:
            attention_mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        return BaseModelOutputWithPooling(
            last_hidden_state=tokens,
            pooler_output=self.pool(tokens, attention_mask),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    # ----- task-primary adapter slots -----------------------------------------------------------------

    def adapter_source(self, task: str) -> str:
        """Where slot `task`'s trained adapter lives: a Hub repo id, or a folder (relative to this model's)."""
        self.config.validate_slot(task)
        source = self.config.task_slots[task].get("adapter")
        if not source:
            raise ValueError(
                f"Adapter slot {task!r} records no trained adapter (config.task_slots[{task!r}]['adapter'])."
            )
        base_dir = str(self.config._name_or_path or "")
        if os.path.isdir(base_dir) and not os.path.isabs(source):
            candidate = os.path.normpath(os.path.join(base_dir, source))
            if os.path.isdir(candidate):
                return candidate
        return source

    def check_adapter_weights(self, adapter_dir: str) -> None:
        """Raise a clear error, naming the file, when an adapter folder does not fit this model: made for another
        backbone, or its adapter_config.json and weights disagree (PEFT would silently drop trained weights, or
        fail with a size mismatch that names no file)."""
        weights = os.path.join(adapter_dir, "adapter_model.safetensors")
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"{weights}: adapter weights not found (expected a PEFT adapter folder).")
        modules = dict(self.named_modules())
        try:
            with safe_open(weights, framework="pt") as handle:
                shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
        except SafetensorError as err:
            raise OSError(f"{weights}: corrupted safetensors file ({err}).") from err
        ranks: dict[str, int] = {}
        for key, shape in shapes.items():
            name = key.removeprefix(PEFT_PREFIX)
            for marker in (".lora_A.", ".lora_B."):
                if marker not in name:
                    continue
                module_name = name.split(marker)[0]
                if marker == ".lora_A.":
                    ranks[module_name] = shape[0]
                target = modules.get(module_name)
                if target is None:
                    raise ValueError(
                        f"{weights}: tensor {key!r} targets module {module_name!r}, which this "
                        f"{self.config.backbone_config.model_type} backbone with {self.config.num_layers} layers "
                        "does not have (adapter made for another backbone?)."
                    )
                expected = target.in_features if marker == ".lora_A." else target.out_features
                actual = shape[1] if marker == ".lora_A." else shape[0]
                if actual != expected:
                    raise ValueError(
                        f"{weights}: tensor {key!r} has size {actual} where module {module_name!r} needs {expected} "
                        "(adapter made for a backbone of another hidden size?)."
                    )
        self._check_adapter_config_matches(adapter_dir, ranks)

    def _check_adapter_config_matches(self, adapter_dir: str, ranks: dict[str, int]) -> None:
        """adapter_config.json must name exactly the modules that have LoRA weights, at their rank."""
        path = os.path.join(adapter_dir, "adapter_config.json")
        config = _read_adapter_config(adapter_dir)
        targets = config.get("target_modules")
        if not config.get("layers_to_transform"):  # PEFT's own layer filter: not used by mtpf, not re-checked
            # with an adapter already attached, a targeted linear sits under its LoRA wrapper as `.base_layer`
            linear = [n.removesuffix(".base_layer") for n, m in self.named_modules() if isinstance(m, nn.Linear)]
            targeted = {name for name in linear if _is_peft_target(name, targets)}
            dropped, untrained = sorted(set(ranks) - targeted), sorted(targeted - set(ranks))
            if dropped:
                raise ValueError(
                    f"{path}: target_modules {targets!r} leaves out {len(dropped)} module(s) that have trained "
                    f"weights in adapter_model.safetensors (e.g. {dropped[0]!r}); PEFT would drop them. "
                    "The config and the weights disagree: was adapter_config.json edited?"
                )
            if untrained:
                raise ValueError(
                    f"{path}: target_modules {targets!r} names {len(untrained)} module(s) with no weights in "
                    f"adapter_model.safetensors (e.g. {untrained[0]!r}); they would start untrained. The config "
                    "and the weights disagree: was adapter_config.json edited?"
                )
        pattern = config.get("rank_pattern") or {}
        wrong = sorted(name for name, rank in ranks.items() if rank != config.get("r") and not pattern)
        if wrong:
            raise ValueError(
                f"{path}: r={config.get('r')!r}, but adapter_model.safetensors holds rank {ranks[wrong[0]]} "
                f"for {wrong[0]!r} ({len(wrong)} module(s) differ). The config and the weights disagree."
            )

    def check_adapter_base(self, adapter_dir: str) -> None:
        """An adapter exported by mtpf records the digest of its backbone's weights; refuse any other backbone."""
        marker = os.path.join(adapter_dir, "mtpf_base.json")
        weights = os.path.join(str(self.config._name_or_path or ""), "model.safetensors")
        if not (os.path.isfile(marker) and os.path.isfile(weights)):
            return  # not made by mtpf, or a backbone not loaded from a folder: nothing recorded to compare
        try:
            with open(marker, encoding="utf-8") as handle:
                recorded = json.load(handle).get("backbone_sha256")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
            raise ValueError(f"{marker}: not readable ({err}).") from err
        if getattr(self, "_weights_digest", None) is None:
            self._weights_digest = _file_sha256(weights)
        if recorded != self._weights_digest:
            raise ValueError(
                f"{marker}: this adapter was made for another backbone (digest {recorded}), not {weights} "
                f"({self._weights_digest}); an adapter only works on the backbone it was trained with."
            )

    def load_task_adapters(self, tasks: list[str] | None = None, is_trainable: bool = False, **kwargs: Any):
        """Attach the trained slots recorded in the config as named PEFT adapters; the first one is active.

        Returns a `peft.PeftModel`; switch tasks with `set_adapter(task)`.
        """
        from peft import PeftModel

        tasks = list(tasks or self.config.task_slots)
        peft_model = None
        for task in tasks:
            source = self.adapter_source(task)
            if os.path.isdir(source):
                self.check_adapter_weights(source)
                self.check_adapter_base(source)
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(
                    self, source, adapter_name=task, is_trainable=is_trainable, **kwargs
                )
            else:
                peft_model.load_adapter(source, adapter_name=task, is_trainable=is_trainable, **kwargs)
        if peft_model is None:
            raise ValueError("This MtpfConfig declares no adapter slots to load.")
        peft_model.set_adapter(tasks[0])
        return peft_model

    def merge_slot(self, task: str) -> MtpfModel:
        """This model with slot `task`'s trained adapter merged into its weights (no PEFT wrapper left)."""
        if task not in self.config.task_slots:
            raise ValueError(f"active_slot={task!r}: this model has the slots {sorted(self.config.task_slots)}.")
        merged = self.load_task_adapters([task]).merge_and_unload()
        merged.config.active_slot = None  # merged now: saving and loading again must not merge it twice
        merged.config.merged_slot = task
        return merged


def _read_adapter_config(adapter_dir: str) -> dict[str, Any]:
    path = os.path.join(adapter_dir, "adapter_config.json")
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable PEFT adapter config ({err}).") from err
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        found = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{path}: peft_type is {found!r}, expected 'LORA'.")
    return config


def _is_peft_target(name: str, targets: Any) -> bool:
    """PEFT's rule: a regex string is full-matched; a list matches a module by its name or a dotted suffix."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == target or name.endswith("." + target) for target in targets or ())


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class MtpfLinearHeadModel(MtpfModel):
    """An MtpfModel plus dropout and a linear classifier; subclasses choose what it reads and the loss.

    It extends MtpfModel rather than wrapping it, so the backbone keeps the same module names
    (`backbone.…`) in every class: a PEFT adapter saved from one loads into all of them.
    """

    def __init__(self, config: MtpfConfig) -> None:
        MtpfPreTrainedModel.__init__(self, config)
        self._build_backbone(config)
        self.num_labels = config.num_labels
        self.dropout = nn.Dropout(_dropout_of(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def backbone_outputs(self, input_ids, attention_mask, token_type_ids, **kwargs: Any) -> BaseModelOutputWithPooling:
        return MtpfModel.forward(
            self, input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs
        )

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(features))


class MtpfForTokenClassification(MtpfLinearHeadModel):
    """Linear token head (NER); labels on first sub-tokens, -100 elsewhere."""

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> TokenClassifierOutput:
        outputs = self.backbone_outputs(input_ids, attention_mask, token_type_ids, **kwargs)
        logits = self.classify(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1), ignore_index=-100)
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class MtpfForSequenceClassification(MtpfLinearHeadModel):
    """Linear head on the pooled sentence embedding (text classification; one label = regression)."""

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        outputs = self.backbone_outputs(input_ids, attention_mask, token_type_ids, **kwargs)
        logits = self.classify(outputs.pooler_output)
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                loss = nn.functional.cross_entropy(logits, labels.view(-1))
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


def _dropout_of(config: MtpfConfig) -> float:
    backbone = config.backbone_config
    for name in ("classifier_dropout", "hidden_dropout_prob", "dropout"):
        value = getattr(backbone, name, None)
        if value is not None:
            return float(value)
    return 0.1


MtpfConfig.register_for_auto_class()
MtpfModel.register_for_auto_class("AutoModel")
MtpfForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")
MtpfForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
