"""What switching the active task slot costs a two-task (mtpf_tpl) step: `activate_slot` to `ner` and back to `tc`,
as `MtpfPretrainingModel.select_task` does before each task's pass.

    python bench/slot_switch.py [--backbone offline:minilm-l6] [--repeats 200]

The slots are attached as pre-finetuning attaches them (r=32 on the last 2 layers, fused linears); the figure is
milliseconds per step (both switches), to be read against the seconds per step of `bench/mode_step_time.py`.
"""

from __future__ import annotations

import argparse
import sys

from common import best_of, write_report

from mtpf.release import load_mtpf_encoder
from mtpf.slots import activate_slot, attach_slots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="offline:minilm-l6")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--output", default="bench/results/slot_switch.json")
    options = parser.parse_args()
    model, _ = load_mtpf_encoder(options.backbone, tasks=["ner", "tc"], tpl_layers=2, r=32, lora_alpha=64)
    model = attach_slots(model, ["ner", "tc"], fused=True)

    def both_switches() -> None:
        activate_slot(model, "ner")
        activate_slot(model, "tc")

    milliseconds = 1000 * best_of(both_switches, options.repeats, warmup=5)
    parameters = sum(1 for _ in model.named_parameters())
    print(f"switching ner -> tc per step: {milliseconds:.2f} ms ({parameters} parameters)")
    results = {"ms_per_step_both_switches": round(milliseconds, 3), "parameters": parameters}
    write_report(options.output, " ".join(["python", *sys.argv]), results)


if __name__ == "__main__":
    main()
