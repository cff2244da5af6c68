"""Shared fixtures: a tiny random BERT (milliseconds) and the real packaged encoders (MODELS.md)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("MTPF_SHARED_DIR", REPO_ROOT.parent / "shared"))
TINY_WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "he",
    "she",
    "it",
    "on",
    "for",
    "with",
    "as",
    "by",
    "at",
    "from",
    "john",
    "smith",
    "paris",
    "london",
    "city",
    "river",
    "company",
    "born",
    "played",
    "team",
    "new",
    "york",
    "moved",
    "floods",
    "every",
    "spring",
    ".",
    ",",
    "##s",
    "##ed",
    "##ing",
    "2019",
]


def write_tokenizer_folder(folder: Path, words: list[str] = TINY_WORDS) -> None:
    """A WordPiece tokenizer built from a folder (transformers 5 ignores BertTokenizer(vocab_file=...))."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 128}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


def tiny_bert_config(**overrides) -> BertConfig:
    values = dict(
        vocab_size=len(TINY_WORDS) + 5,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    values.update(overrides)
    return BertConfig(**values)


def build_tiny_encoder(folder: Path, seed: int = 0, **overrides) -> Path:
    """Save a randomly initialised tiny BERT and its tokenizer, like a Hub encoder folder."""
    torch.manual_seed(seed)
    BertModel(tiny_bert_config(**overrides)).save_pretrained(folder)
    write_tokenizer_folder(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_encoder_dir):
    return AutoTokenizer.from_pretrained(tiny_encoder_dir)


def real_encoder_dir(name: str) -> Path:
    """Folder of a packaged real encoder; the test fails (not skips) when CI did not install it."""
    from mtpf.weights import packaged_encoder_dir

    return packaged_encoder_dir(name)


def randomize_lora(peft_model, seed: int = 0, scale: float = 0.2) -> None:
    """Give every LoRA matrix non-zero values so slots really change the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)


SMOKE_CONFIG = REPO_ROOT / "configs" / "smoke.yaml"


@pytest.fixture(scope="session")
def pseudo_label_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pseudo-labels")


@pytest.fixture(scope="session")
def dropout_free_encoder_dir(tmp_path_factory) -> Path:
    """The smoke encoder without dropout, so gradients compare exactly across differently ordered passes."""
    from transformers import AutoModel

    from mtpf.weights import tiny_encoder_dir

    folder = tmp_path_factory.mktemp("dropout-free")
    source = tiny_encoder_dir()
    model = AutoModel.from_pretrained(source, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def smoke_argv(output_dir: Path, pseudo_label_dir: Path, *overrides: str) -> list[str]:
    """configs/smoke.yaml with absolute data paths and a private output folder, plus overrides."""
    data = SHARED_DIR / "data"
    return [
        str(SMOKE_CONFIG),
        "--pairs",
        str(data / "pairs/stsb"),
        str(data / "pairs/sick"),
        "--ner_corpus",
        str(data / "unlabeled/news_en_sentences_msrp.txt"),
        "--pseudo_label_dir",
        str(pseudo_label_dir),
        "--output_dir",
        str(output_dir),
        *overrides,
    ]


def build_smoke_trainer(output_dir: Path, pseudo_label_dir: Path, *overrides: str):
    from mtpf.training import build_trainer
    from mtpf.training.args import parse_args

    return build_trainer(*parse_args(smoke_argv(output_dir, pseudo_label_dir, *overrides)))


def train_smoke_release(output_dir: Path, pseudo_label_dir: Path, *overrides: str) -> Path:
    """A smoke run trained to its end and exported: the release folder (`OUTPUT_DIR/release` unless overridden)."""
    from mtpf.training import build_trainer, export
    from mtpf.training.args import parse_args

    model_args, data_args, args = parse_args(smoke_argv(output_dir, pseudo_label_dir, *overrides))
    trainer = build_trainer(model_args, data_args, args)
    trainer.train()
    return export(trainer, data_args)


def mtpf_command(*args: object) -> list[str]:
    """`python -m mtpf ARGS...` as a subprocess command (every argument as text)."""
    return [sys.executable, "-m", "mtpf", *map(str, args)]


def run_command(command: list[str], cwd: Path, timeout: int = 600, **env: str):
    """Run a user-facing command offline in a fresh process; fail the test with its stderr tail if it fails."""
    import subprocess

    environment = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **env)
    environment.pop("PYTHONPATH", None)
    result = subprocess.run(
        command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


TINY = "offline:tiny-bert"  # 2 layers, hidden 32, MiniLM's real (fast) tokenizer


@pytest.fixture(scope="session")
def slotted_release(tmp_path_factory) -> Path:
    """A release of the tiny encoder whose slots (r=8, alpha=32, last layer) hold random non-zero weights."""
    from mtpf.release import export_release, load_encoder, mtpf_model_from_encoder
    from mtpf.slots import attach_slots

    encoder, tokenizer = load_encoder(TINY)
    model = mtpf_model_from_encoder(encoder, tpl_layers=1, r=8, lora_alpha=32)
    peft_model = attach_slots(model)
    randomize_lora(peft_model, seed=3)
    return export_release(peft_model, tokenizer, tmp_path_factory.mktemp("eval") / "release")


EVAL_ROOTS = ["--ner_data_root", str(SHARED_DIR / "data" / "ner"), "--tc_data_root", str(SHARED_DIR / "data" / "tc")]


def eval_command(output, *args: str) -> list[str]:
    """`python -m mtpf eval --suite smoke` into `output`, reading the shared data wherever the test runs."""
    return ["python", "-m", "mtpf", "eval", "--suite", "smoke", "--output", str(output), *EVAL_ROOTS, *args]


@pytest.fixture(scope="session")
def smoke_eval(slotted_release, tmp_path_factory) -> tuple[Path, list[str]]:
    """The smoke suite run once, sequentially, on the tiny encoder and a release of it: (output, --model args)."""
    output = tmp_path_factory.mktemp("smoke-eval") / "eval"
    models = ["--model", TINY, "--model", f"tpl={slotted_release}"]  # LABEL=PATH names a model in the tables
    run_command(eval_command(output, *models), cwd=REPO_ROOT)
    return output, models


# ----- apps (mtpf finetune): a real 2-layer encoder, so the app finds entities -----------------------------------
from mtpf.apps.ner.train import NerProtocol  # noqa: E402

NER_ROOT = SHARED_DIR / "data" / "ner"
# Small enough for CI, large enough that the real 2-layer encoder finds entities (test F1 > 0).
APP_PROTOCOL = NerProtocol(
    warmup_epochs=1,
    epochs=3,
    batch_size=16,
    learning_rate=3e-3,
    max_length=48,
    max_train_sentences=200,
    max_dev_sentences=64,
    max_test_sentences=100,
    min_steps_per_epoch=2,
)


@pytest.fixture(scope="session")
def app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("app")
    from mtpf.release import init_release

    release = init_release(str(real_encoder_dir("splade-tiny")), folder / "release", tpl_layers=1)
    protocol = [f"--{k}={v}" for k, v in vars(APP_PROTOCOL).items() if k != "target_modules" and v is not None]
    cli = mtpf_command(
        "finetune",
        str(release),
        "--task",
        "ner",
        "--data",
        "crossner_ai",
        "--output",
        str(folder / "app"),
        "--ner_data_root",
        str(NER_ROOT),
        "--seed",
        "1",
        *protocol,
    )
    run_command(cli, REPO_ROOT)
    return release, folder / "app"


from mtpf.apps.classification import ClassificationProtocol  # noqa: E402

TC_ROOT = SHARED_DIR / "data" / "tc"
CLASSIFIER_PROTOCOL = ClassificationProtocol(
    warmup_epochs=1,
    epochs=2,
    batch_size=16,
    max_length=48,
    max_train_sentences=300,
    max_dev_sentences=64,
    max_test_sentences=150,
)


@pytest.fixture(scope="session")
def classifier_app(app):
    """A sentence-classification app on the NER app's release (so both share one backbone), via the CLI."""
    release, ner_app = app
    protocol = [f"--{k}={v}" for k, v in vars(CLASSIFIER_PROTOCOL).items() if k != "target_modules" and v is not None]
    output = ner_app.parent / "classifier"
    cli = mtpf_command(
        "finetune",
        str(release),
        "--task",
        "classification",
        "--data",
        "emotion",
        "--output",
        str(output),
        "--tc_data_root",
        str(TC_ROOT),
        *protocol,
    )
    run_command(cli, REPO_ROOT)
    return release, output


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (servers and torchrun rendezvous in the tests)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
