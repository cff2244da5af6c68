"""Interference curves: measure every slot of a model, during training (callback) or for saved models (CLI)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel
from transformers import TrainerCallback

from mtpf.analysis.metrics import interference_metrics
from mtpf.analysis.perturbation import perturbed_set
from mtpf.data.conll import ConllFormat, TaggedSentence, read_conll
from mtpf.data.roots import CONLL_TEST
from mtpf.io import atomic_write_text
from mtpf.slots import activate_slot

logger = logging.getLogger(__name__)
BASE = "base"


@dataclass
class AnalysisSet:
    perturbed: list[tuple[TaggedSentence, list[TaggedSentence]]]
    homogeneity: list[TaggedSentence]

    @classmethod
    def from_conll(cls, path: str, sentences: int = 2000, variants: int = 4, seed: int = 0) -> AnalysisSet:
        """`sentences` of the file for homogeneity; the first of them with entities (4 variants each) for Finding 1."""
        data = read_conll(path, ConllFormat())
        return cls(perturbed_set(data, variants, seed, max_sentences=sentences), data[:sentences])


def measure_slots(encoder, tokenizer, analysis: AnalysisSet, max_length: int = 128) -> dict[str, dict[str, float]]:
    """Both metrics for the backbone alone and for every task slot (a plain model: the backbone only)."""
    was_training = encoder.training
    encoder.eval()
    results = {}
    try:
        if isinstance(encoder, PeftModel):
            active = encoder.active_adapter
            trainable = {name: p.requires_grad for name, p in encoder.named_parameters()}
            for slot in [None, *encoder.peft_config]:
                activate_slot(encoder, slot)
                results[slot or BASE] = interference_metrics(
                    encoder, tokenizer, analysis.perturbed, analysis.homogeneity, max_length
                )
            activate_slot(encoder, active)
            for name, param in encoder.named_parameters():
                param.requires_grad = trainable[name]
        else:
            results[BASE] = interference_metrics(
                encoder, tokenizer, analysis.perturbed, analysis.homogeneity, max_length
            )
    finally:
        encoder.train(was_training)
    return results


class InterferenceCallback(TrainerCallback):
    """Every `every` steps (and before the first), append both metrics per slot to OUTPUT_DIR/interference.json."""

    def __init__(self, analysis: AnalysisSet, tokenizer, every: int, label: str) -> None:
        self.analysis, self.tokenizer, self.every, self.label = analysis, tokenizer, every, label
        self.history: list[dict] = []

    def _record(self, args, state, model) -> None:
        if not state.is_world_process_zero:
            return
        encoder = getattr(model, "module", model).encoder
        with torch.random.fork_rng():
            slots = measure_slots(encoder, self.tokenizer, self.analysis)
        self.history.append({"step": state.global_step, "slots": slots})
        path = Path(args.output_dir) / "interference.json"
        atomic_write_text(path, json.dumps({"label": self.label, "history": self.history}, indent=2) + "\n")
        logger.info("interference at step %d: %s", state.global_step, slots)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self._record(args, state, model)
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._record(args, state, model)
        return control


def load_for_analysis(name_or_path: str):
    """Any model by name with every trained slot attached (`mtpf.models.load_model`), and its tokenizer."""
    from mtpf.models import load_model

    loaded = load_model(name_or_path)
    return loaded.with_slots(), loaded.tokenizer


@dataclass
class AnalyzeArguments:
    """Interference metrics (paper Sec. 5) of saved models, and Fig. 3-style plots of training curves."""

    output: str = field(metadata={"help": "Folder for analysis.json and the plot."})
    models: list[str] = field(default_factory=list, metadata={"help": "Release folders or encoders (folder/Hub id)."})
    curves: list[str] = field(default_factory=list, metadata={"help": "interference.json files of training runs."})
    data: str = field(default=CONLL_TEST, metadata={"help": "BIO CoNLL file."})
    sentences: int = field(default=2000, metadata={"help": "Sentences measured (paper: 2,000)."})
    variants: int = field(default=4, metadata={"help": "Perturbed variants per sentence (paper: 4)."})
    seed: int = field(default=0, metadata={"help": "Seed of the entity replacement."})


def analyze_models(arguments: AnalyzeArguments) -> Path:
    """Both metrics for every slot of every model, written to OUTPUT/analysis.json."""
    data, sentences, variants, seed = arguments.data, arguments.sentences, arguments.variants, arguments.seed
    analysis = AnalysisSet.from_conll(data, sentences, variants, seed)
    results = {}
    for name in arguments.models:
        encoder, tokenizer = load_for_analysis(name)
        results[name] = measure_slots(encoder, tokenizer, analysis)
        logger.info("%s: %s", name, results[name])
    path = Path(arguments.output) / "analysis.json"
    settings = {"data": data, "sentences": sentences, "variants": variants, "seed": seed}
    atomic_write_text(path, json.dumps({"settings": settings, "models": results}, indent=2) + "\n")
    return path
