"""Arguments of a pre-finetuning run: dataclasses parsed by HfArgumentParser from YAML plus `--key value`."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from configuration_mtpf import DEFAULT_TARGET_ROLES
from mtpf.data.roots import CONLL_TEST, PAIRS_DATA, UNLABELED_DATA
from mtpf.tasks import DEFAULT_SLOTS, task_order
from mtpf.training.precision import use_cpu_bf16

MODES = {
    # mode: (default tasks, uses task-primary slots, trains the backbone)
    "pf_ner": (("ner",), False, True),
    "pf_tc": (("tc",), False, True),
    "mtpf": (("ner", "tc"), False, True),
    "mtpf_tpl": (("ner", "tc"), True, True),
    "pf_lora": (("ner", "tc"), True, False),
}


@dataclass
class SlotArguments:
    """The task-primary LoRA slots: where they sit and their LoRA settings (shared by `init` and training)."""

    tpl_layers: int = field(default=2, metadata={"help": "Slots on this many last layers (0: all layers)."})
    slot_layers: list[str] | None = field(
        default=None,
        metadata={"help": "Per-slot placement TASK=N (N last layers, 0: all), e.g. `tc=0 ner=2`; others: tpl_layers."},
    )
    rank: int = field(default=32, metadata={"help": "LoRA rank of every slot."})
    alpha: int = field(default=64, metadata={"help": "LoRA alpha of every slot."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout inside every LoRA."})
    target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_TARGET_ROLES),
        metadata={"help": "Roles the slots adapt: query key value attn_out mlp_in mlp_out (mlp = both)."},
    )

    def slot_kwargs(self) -> dict:
        """Keyword arguments of `MtpfConfig.from_backbone` / `make_slot`."""
        placement = {"layers_by_task": self.layers_by_task()} if self.slot_layers else {}
        return {
            "tpl_layers": self.tpl_layers,
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": self.target_modules,
            **placement,
        }

    def layers_by_task(self) -> dict[str, int]:
        """`--slot_layers tc=0 ner=2` as {task: number of last layers}."""
        placement = {}
        for spec in self.slot_layers or []:
            task, sep, layers = spec.partition("=")
            if not sep or not task or not layers.isdigit():
                raise ValueError(f"--slot_layers {spec!r}: expected TASK=N with N a number of last layers (0: all).")
            placement[task] = int(layers)
        return placement


@dataclass
class ModelArguments(SlotArguments):
    backbone: str = field(
        default="microsoft/MiniLM-L12-H384-uncased",
        metadata={"help": "Encoder to pre-finetune: Hub id, folder, or offline:NAME (a packaged encoder)."},
    )
    mode: str = field(default="mtpf_tpl", metadata={"help": f"One of {sorted(MODES)}."})
    pcgrad: bool = field(default=False, metadata={"help": "Project conflicting task gradients on shared parameters."})
    task_names: list[str] | None = field(
        default=None,
        metadata={
            "help": "Tasks to train (registered names, see mtpf.tasks); default the mode's (ner and/or tc).",
            "aliases": ["--tasks"],
        },
    )
    fused_lora: bool = field(
        default=True,
        metadata={
            "help": "Train the slots as fused LoRA linears, one matmul against W + s*B*A (the same function and "
            "gradients, less work; only with a trainable backbone and lora_dropout 0)."
        },
    )

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: choose one of {sorted(MODES)}.")
        self.task_names = list(task_order(self.task_names or MODES[self.mode][0]))

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.task_names)

    @property
    def slots(self) -> tuple[str, ...]:
        """Every release carries the ner and tc slots (trained or not), plus one per other task of the run."""
        return task_order([*DEFAULT_SLOTS, *self.tasks])

    @property
    def uses_slots(self) -> bool:
        return MODES[self.mode][1]

    @property
    def trains_backbone(self) -> bool:
        return MODES[self.mode][2]


@dataclass
class DataArguments:
    pairs: list[str] = field(
        default_factory=lambda: [PAIRS_DATA],
        metadata={"help": "Text-pair sources: .tsv/.csv/.jsonl, folders with pairs.tsv (or of such folders), hf://ID."},
    )
    tc_batch_size: int = field(default=1024, metadata={"help": "Pairs per TC batch, over all processes."})
    tc_mini_batch_size: int = field(
        default=0, metadata={"help": "Gradient caching: texts embedded at once (0: no caching)."}
    )
    tc_length_chunk: int = field(
        default=0,
        metadata={
            "help": "Embed each TC batch in length-sorted chunks of N texts, each padded only to its own longest "
            "(same loss, less padding; with gradient caching the mini-batches are length-sorted instead). 0: off."
        },
    )
    temperature: float = field(default=0.05, metadata={"help": "InfoNCE temperature."})
    tc_anchor_weight: float = field(
        default=0.0,
        metadata={
            "help": "Anchor λ: add λ·mean(1 − cos) between the TC embeddings and the frozen starting encoder's "
            "embeddings of the same texts (self-distillation; keeps what a strong base embeds well). 0: off."
        },
    )
    pair_sampling_temperature: float = field(
        default=1.0, metadata={"help": "Dataset draw ~ size**(1/T): 1 size-proportional, larger flatter."}
    )
    ner_corpus: list[str] = field(
        default_factory=lambda: [f"{UNLABELED_DATA}/wikipedia_en_sentences_altlex.txt"],
        metadata={"help": "Unlabeled text files (one sentence per line) for NER distillation."},
    )
    teacher: str = field(default="numind/NuNER-v1.0", metadata={"help": "NER teacher encoder (folder or Hub id)."})
    num_clusters: int = field(default=200, metadata={"help": "k of the k-means pseudo-labels."})
    max_ner_sentences: int | None = field(default=None, metadata={"help": "Cap on corpus sentences (None: all)."})
    ner_batch_size: int = field(default=256, metadata={"help": "Sentences per NER batch, over all processes."})
    ner_length_buckets: int = field(
        default=0,
        metadata={"help": "Sort each run of N shuffled NER batches by length before cutting them (0: off)."},
    )
    ner_backbone_grad_scale: float = field(
        default=1.0,
        metadata={
            "help": "Scale of the NER loss's gradient into the shared backbone (1: all of it; 0: NER trains only "
            "its slot and head, so the backbone moves by TC alone)."
        },
    )
    max_seq_length: int = field(default=128, metadata={"help": "Sub-tokens per text."})
    pseudo_label_dir: str = field(default="outputs/pseudo-labels", metadata={"help": "Pseudo-label cache folder."})
    task_schedule: str = field(
        default="both", metadata={"help": "'both': each step one NER + one TC batch; 'alternate'."}
    )
    task_ratio: str = field(default="1:1", metadata={"help": "NER:TC steps in 'alternate' (e.g. 1:3)."})
    release_dir: str | None = field(default=None, metadata={"help": "Release folder (default: OUTPUT_DIR/release)."})
    release_interpolation: float | None = field(
        default=None,
        metadata={
            "help": "Release the backbone interpolated towards the starting encoder: (1 − α)·base + α·trained "
            "(WiSE-FT; slots kept). The trained release stays in OUTPUT_DIR/release-trained. None: off."
        },
    )
    release_layer_alphas: list[float] | None = field(
        default=None,
        metadata={
            "help": "Per-position α instead of one: the embeddings, then each layer (needs release_interpolation)."
        },
    )
    analysis_steps: int = field(
        default=0, metadata={"help": "Record the interference metrics every N steps (0: never); see mtpf/analysis."}
    )
    analysis_data: str = field(default=CONLL_TEST, metadata={"help": "BIO CoNLL file for the analysis."})
    analysis_sentences: int = field(default=2000, metadata={"help": "Sentences measured per analysis (paper: 2,000)."})

    def __post_init__(self) -> None:
        """Reject impossible sizes up front, naming the flag, instead of failing after a training step."""
        at_least = {"tc_batch_size": 2, "ner_batch_size": 1, "num_clusters": 2, "max_seq_length": 2}
        for name, minimum in at_least.items():
            if getattr(self, name) < minimum:
                raise ValueError(f"--{name} {getattr(self, name)}: must be at least {minimum}.")
        if self.tc_length_chunk < 0:
            raise ValueError(f"--tc_length_chunk {self.tc_length_chunk}: must be 0 (off) or positive.")
        if self.tc_mini_batch_size < 0:
            raise ValueError(f"--tc_mini_batch_size {self.tc_mini_batch_size}: must be 0 (off) or positive.")
        if self.max_ner_sentences is not None and self.max_ner_sentences < 1:
            raise ValueError(f"--max_ner_sentences {self.max_ner_sentences}: must be positive (or unset: all).")
        if self.temperature <= 0:
            raise ValueError(f"--temperature {self.temperature}: must be positive.")
        if self.release_layer_alphas and self.release_interpolation is None:
            raise ValueError("--release_layer_alphas needs --release_interpolation (the α of what is not a layer).")
        for alpha in [self.release_interpolation, *(self.release_layer_alphas or [])]:
            if alpha is not None and not 0.0 <= alpha <= 1.0:
                raise ValueError(f"--release_interpolation/--release_layer_alphas {alpha}: must be in [0, 1].")

    def pair_paths(self) -> list[str]:
        """Expand folders of pair folders (like ../shared/data/pairs) into their pairs.tsv files."""
        paths = []
        for spec in self.pairs:
            folder = Path(spec)
            if folder.is_dir() and not (folder / "pairs.tsv").is_file():
                children = sorted(str(child) for child in folder.iterdir() if (child / "pairs.tsv").is_file())
                if not children:
                    raise FileNotFoundError(f"{folder}: no pairs.tsv in it or in its sub-folders.")
                paths.extend(children)
            else:
                paths.append(spec)
        return paths


@dataclass
class MtpfTrainingArguments(TrainingArguments):
    """TrainingArguments with the defaults of the paper's recipe and of multi-task training."""

    learning_rate: float = field(default=2e-5, metadata={"help": "AdamW learning rate (paper: 2e-5)."})
    ner_head_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the fresh pseudo-label head (None: learning_rate)."}
    )
    slot_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the task-primary LoRA slots (None: learning_rate). LoRAs usually want "
            "~5e-4-1e-3 (jina-embeddings-v3), a full-model rate (2e-5-5e-5) leaves them under-trained."
        },
    )
    max_steps: int = field(default=100_000, metadata={"help": "Optimizer steps (paper: 100K)."})
    report_to: str | list[str] = field(default="tensorboard", metadata={"help": "Loggers (tensorboard)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Batches are built per step, keep all."})
    ddp_find_unused_parameters: bool = field(
        default=True, metadata={"help": "Inactive slots and heads take no part in a task's pass."}
    )
    average_tokens_across_devices: bool = field(default=False, metadata={"help": "Else DDP doubles the loss."})
    save_safetensors: bool = field(default=True, metadata={"help": "Checkpoint weights as safetensors."})

    def __post_init__(self) -> None:
        """`--bf16 true` on a machine without CUDA: autocast on the CPU where it has native bf16, else fp32."""
        if self.bf16 and not torch.cuda.is_available():
            self.bf16 = use_cpu_bf16()
            self.use_cpu = self.use_cpu or self.bf16
        super().__post_init__()


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, MtpfTrainingArguments]:
    """`CONFIG.yaml [--key value ...]`: the YAML gives defaults, command-line keys override them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, MtpfTrainingArguments))
    if argv and argv[0].endswith((".yaml", ".yml")):
        argv = yaml_to_argv(Path(argv[0])) + argv[1:]
    return parser.parse_args_into_dataclasses(args=argv)


def yaml_to_argv(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found.")
    try:
        with path.open(encoding="utf-8") as stream:  # a stream, so YAML's errors name the file, not "<unicode string>"
            data = yaml.safe_load(stream) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a valid YAML config ({err}).") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of argument names to values.")
    argv: list[str] = []
    for key, value in data.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        argv += [f"--{key}", *(str(v) for v in values)]
    return argv
