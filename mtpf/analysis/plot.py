"""Fig. 3-style curves: perturbed-sentence similarity and intra-sentence token similarity over training steps."""

from __future__ import annotations

import json
from pathlib import Path

PANELS = (("perturbed_similarity", "(a) perturbed sentences"), ("token_homogeneity", "(b) tokens within a sentence"))


def load_history(path: str | Path) -> tuple[str, list[dict]]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return data.get("label", Path(path).parent.name), data["history"]


def plot_curves(histories: list[str | Path], output: str | Path, slots: tuple[str, ...] | None = None) -> Path:
    """One line per run and slot; `slots` limits which slots are drawn (default: every slot of every run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for path in histories:
        label, history = load_history(path)
        names = sorted({slot for entry in history for slot in entry["slots"]})
        for slot in names if slots is None else [s for s in names if s in slots]:
            steps = [entry["step"] for entry in history if slot in entry["slots"]]
            for axis, (metric, _) in zip(axes, PANELS):
                values = [entry["slots"][slot][metric] for entry in history if slot in entry["slots"]]
                axis.plot(steps, values, marker="o", markersize=3, label=f"{label} [{slot}]")
    for axis, (_, title) in zip(axes, PANELS):
        axis.set_title(title)
        axis.set_xlabel("pre-finetuning step")
        axis.set_ylabel("mean cosine similarity")
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    figure.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return output
