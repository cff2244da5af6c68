"""Retire the TC scores of a results folder made before TC embedded texts as the model defines them.

Folders written before the TC protocol recorded `embedding` fed MTEB's probe un-normalised mean pooling at up to
512 (or the suite's) sub-tokens, so their TC scores are not MTEB's. This drops those TC scores (records, runs and
missing entries) and records the current TC protocol of the folder's suite, keeping every NER score (NER never used
the sentence embedding). Re-score TC into the same folder afterwards:

    python scripts/redo_tc.py results/quick
    mtpf-eval --suite quick --skip_ner --output results/quick --model offline:minilm-l6 --model offline:splade-tiny
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtpf.evaluation.suites import SUITES, saved_protocol_of  # noqa: E402
from mtpf.evaluation.tables import results_markdown  # noqa: E402
from mtpf.evaluation.tc import TC_TASKS  # noqa: E402
from mtpf.io import atomic_write_text  # noqa: E402


def retire_tc(folder: Path) -> int:
    """Drop the legacy TC scores of `folder`; returns how many were dropped (0: nothing to do)."""
    path = folder / "results.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    suite = data["suite"]
    current = SUITES[suite["name"]].tc
    if saved_protocol_of(suite, "tc") == current:
        print(f"{path}: TC protocol is already the current one; nothing to do")
        return 0
    tc_names = {spec.mteb_name for spec in TC_TASKS.values()}
    dropped = [r for r in data["results"] if r["family"] == "tc"]
    data["results"] = [r for r in data["results"] if r["family"] != "tc"]
    data["runs"] = [run for run in data.get("runs", []) if run.get("dataset") not in tc_names]
    data["missing"] = [m for m in data.get("missing", []) if m["family"] != "tc"]
    suite["tc"] = asdict(current)
    note = f"python scripts/redo_tc.py {folder}  # dropped {len(dropped)} TC scores of the legacy encoder"
    suite["previous_commands"] = [*suite.get("previous_commands", []), suite.get("command", ""), note]
    suite["command"] = ""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    atomic_write_text(folder / "results.md", results_markdown(data))
    print(f"{path}: dropped {len(dropped)} legacy TC scores; re-score with mtpf-eval --skip_ner --output {folder}")
    return len(dropped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="results folders (each with results.json)")
    for folder in parser.parse_args().folders:
        retire_tc(folder)


if __name__ == "__main__":
    main()
