"""The TC task's own arguments (`train_mtpf.py --tc_batch_size ...`), registered with the task."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mtpf.data.roots import PAIRS_DATA


@dataclass
class TcArguments:
    """Text pairs, contrastive batches and the anchor."""

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

    def validate(self) -> None:
        """Reject impossible sizes up front, naming the flag, instead of failing after a training step."""
        if self.tc_batch_size < 2:
            raise ValueError(f"--tc_batch_size {self.tc_batch_size}: must be at least 2.")
        if self.tc_length_chunk < 0:
            raise ValueError(f"--tc_length_chunk {self.tc_length_chunk}: must be 0 (off) or positive.")
        if self.tc_mini_batch_size < 0:
            raise ValueError(f"--tc_mini_batch_size {self.tc_mini_batch_size}: must be 0 (off) or positive.")
        if self.temperature <= 0:
            raise ValueError(f"--temperature {self.temperature}: must be positive.")

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
