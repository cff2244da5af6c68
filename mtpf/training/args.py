"""Arguments of a pre-finetuning run: dataclasses parsed by HfArgumentParser from YAML plus `--key value`."""

from __future__ import annotations

import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from configuration_mtpf import DEFAULT_TARGET_ROLES
from mtpf.data.roots import CONLL_TEST
from mtpf.tasks import DEFAULT_SLOTS, TASKS, task_order
from mtpf.tasks.ner.args import NerArguments
from mtpf.tasks.tc.args import TcArguments
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
    slot_ranks: list[str] | None = field(
        default=None,
        metadata={
            "help": "Per-slot rank TASK=R, e.g. `tc=8`; that slot's alpha scales with it (alpha / rank stays). "
            "Others: rank. A NER slot initialises a downstream LoRA, so keep it at most the downstream r (32)."
        },
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout inside every LoRA."})
    target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_TARGET_ROLES),
        metadata={"help": "Roles the slots adapt: query key value attn_out mlp_in mlp_out (mlp = both)."},
    )

    def slot_kwargs(self) -> dict:
        """Keyword arguments of `MtpfConfig.from_backbone` / `make_slot`."""
        placement = {"layers_by_task": self.layers_by_task()} if self.slot_layers else {}
        ranks = {"ranks_by_task": self.ranks_by_task()} if self.slot_ranks else {}
        return {
            "tpl_layers": self.tpl_layers,
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": self.target_modules,
            **placement,
            **ranks,
        }

    def layers_by_task(self) -> dict[str, int]:
        """`--slot_layers tc=0 ner=2` as {task: number of last layers}."""
        return per_task_numbers("--slot_layers", self.slot_layers, "a number of last layers (0: all)")

    def ranks_by_task(self) -> dict[str, int]:
        """`--slot_ranks tc=8` as {task: rank}."""
        return per_task_numbers("--slot_ranks", self.slot_ranks, "a LoRA rank")


def per_task_numbers(flag: str, specs: list[str] | None, meaning: str) -> dict[str, int]:
    """`TASK=N` specs of a per-slot option as {task: N}; a malformed one is refused with the flag named."""
    numbers = {}
    for spec in specs or []:
        task, sep, number = spec.partition("=")
        if not sep or not task or not number.isdigit():
            raise ValueError(f"{flag} {spec!r}: expected TASK=N with N {meaning}.")
        numbers[task] = int(number)
    return numbers


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
class RunDataArguments:
    """What a run's data and release need besides any one task's options."""

    max_seq_length: int = field(default=128, metadata={"help": "Sub-tokens per text."})
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

    def validate(self) -> None:
        if self.max_seq_length < 2:
            raise ValueError(f"--max_seq_length {self.max_seq_length}: must be at least 2.")
        if self.release_layer_alphas and self.release_interpolation is None:
            raise ValueError("--release_layer_alphas needs --release_interpolation (the α of what is not a layer).")
        for alpha in [self.release_interpolation, *(self.release_layer_alphas or [])]:
            if alpha is not None and not 0.0 <= alpha <= 1.0:
                raise ValueError(f"--release_interpolation/--release_layer_alphas {alpha}: must be in [0, 1].")


@dataclass
class DataArguments(RunDataArguments, NerArguments, TcArguments):
    """The run's data arguments: its own plus each built-in task's (a task registered later brings its own
    dataclass as `Task.arguments`; `parse_args` adds it, so its options need no edit here)."""

    def __post_init__(self) -> None:
        for part in (TcArguments, NerArguments, RunDataArguments):
            part.validate(self)


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
    slot_learning_rate_tasks: list[str] | None = field(
        default=None,
        metadata={
            "help": "The slots that take slot_learning_rate (default: every slot); the others train at "
            "learning_rate, e.g. `ner` for a NER slot at a LoRA rate beside a TC slot at the backbone's."
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
        if self.slot_learning_rate_tasks and self.slot_learning_rate is None:
            raise ValueError("--slot_learning_rate_tasks needs --slot_learning_rate (the rate those slots take).")
        super().__post_init__()


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, MtpfTrainingArguments]:
    """`CONFIG.yaml [--key value ...]`: the YAML gives defaults, command-line keys override them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = task_argument_classes()
    parser = HfArgumentParser((ModelArguments, DataArguments, *extra, MtpfTrainingArguments))
    if argv and argv[0].endswith((".yaml", ".yml")):
        argv = yaml_to_argv(Path(argv[0])) + argv[1:]
    model_args, data_args, *task_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    for options in task_args:  # a task reads its options from the run's data arguments, like the built-in ones
        for name, value in vars(options).items():
            setattr(data_args, name, value)
    return model_args, data_args, training_args


def argument_defaults() -> dict[str, object]:
    """Every training argument's default (what a release's `pretraining` record means by leaving an option out: the
    options that change the model are recorded only when they differ from it)."""
    defaults: dict[str, object] = {}
    for cls in (ModelArguments, DataArguments, *task_argument_classes(), MtpfTrainingArguments):
        for option in fields(cls):
            if option.default is not MISSING:
                defaults.setdefault(option.name, option.default)
            elif option.default_factory is not MISSING:
                defaults.setdefault(option.name, option.default_factory())
    return defaults


def task_argument_classes() -> list[type]:
    """The argument dataclasses of registered tasks that `DataArguments` does not already hold."""
    classes = []
    for task in TASKS.values():
        arguments = getattr(task, "arguments", None)
        if arguments is not None and not issubclass(DataArguments, arguments) and arguments not in classes:
            classes.append(arguments)
    return classes


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
    return mapping_to_argv(data)


def mapping_to_argv(data: dict) -> list[str]:
    """{name: value or list} as `--name value ...` (None: left at its default), as a config file's keys are read."""
    argv: list[str] = []
    for key, value in data.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        argv += [f"--{key}", *(str(v) for v in values)]
    return argv
