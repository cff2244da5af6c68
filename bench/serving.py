"""Serving latency: backbone alone vs one active slot vs a merged slot vs a mixed-slot batch vs one pass per slot.

    python bench/serving.py [--backbone offline:minilm-l6] [--repeats 30]

Four slots (rank 32, alpha 64, query/key/MLP of the last 2 layers) with non-zero weights; real sentences from
CoNLL-2003 test; latency per sentence at batch 1 and 32 (median of repeats, the ways to serve timed in turn round
after round). `active_slot` is what `mtpf serve` runs for a one-app batch: fused LoRA linears with every slot's
merged weight cached (`mtpf/fused_lora.py`); `active_slot_unmerged` is PEFT's LoRA on the same weights, and at batch 1
its cost is taken apart: one PEFT LoRA linear against its base linear on the same input, times the number of LoRA
linears, is the overhead it should add. `active_slot_without_peft_wrapper` calls the model inside `PeftModel`;
`cold_cache` forms the merged weights before every forward (an adapter the cache does not hold);
`alternating_slots` switches the active slot before every forward (`set_adapter_ms`: one switch alone).
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
from common import interleaved_medians, write_report

from mtpf.data.roots import CONLL_TEST
from mtpf.fused_lora import set_weight_cache

SLOTS = ["ner", "tc", "app3", "app4"]
DATA = CONLL_TEST


def measure(batch_size: int, models: dict, tokenizer, sentences: list[str], repeats: int) -> dict:
    """ms per sentence of each way to serve, and ratios to the backbone alone (`models`: base, slotted, unmerged,
    merged)."""
    base, slotted, unmerged, merged = (models[key] for key in ("base", "slotted", "unmerged", "merged"))
    batch = dict(tokenizer(sentences[:batch_size], padding=True, return_tensors="pt"))

    def alternating_slots():  # two forwards, each after a switch: `calls` below halves its time
        for slot in ("tc", "ner"):
            slotted.set_adapter(slot)
            slotted(**batch)

    runs = {
        "backbone": lambda: base(**batch),
        "active_slot": lambda: slotted(**batch),
        "active_slot_without_peft_wrapper": lambda: slotted.base_model.model(**batch),
        "active_slot_unmerged": lambda: unmerged(**batch),
        "merged_slot": lambda: merged(**batch),
        "alternating_slots": alternating_slots,
        # PEFT's per-row path with every row on one slot (what `mtpf serve` ran for a one-app batch before it
        # switched to the active-slot path above)
        "mixed_path_one_slot": lambda: slotted(**batch, adapter_names=["ner"] * batch_size),
    }
    if batch_size > 1:
        rows = [SLOTS[i % len(SLOTS)] for i in range(batch_size)]
        groups = {slot: [i for i, s in enumerate(rows) if s == slot] for slot in SLOTS}

        def per_slot_passes():
            for slot, index in groups.items():
                slotted.set_adapter(slot)
                slotted(**{k: v[index] for k, v in batch.items()})
            slotted.set_adapter("ner")

        runs["mixed_batch_4_slots"] = lambda: slotted(**batch, adapter_names=rows)
        runs["one_pass_per_slot"] = per_slot_passes
    calls = {"alternating_slots": 2}
    timings = {
        name: seconds / batch_size / calls.get(name, 1) * 1000
        for name, seconds in interleaved_medians(runs, repeats).items()
    }
    reference = timings["backbone"]
    result = {
        name: {"ms_per_sentence": round(ms, 3), "vs_backbone": round(ms / reference, 3)} for name, ms in timings.items()
    }
    if batch_size > 1:
        result["mixed_batch_4_slots"]["vs_single_slot_batch"] = round(
            timings["mixed_batch_4_slots"] / timings["active_slot"], 3
        )
    for name, ms in timings.items():
        print(f"batch {batch_size:2d} {name:22s} {ms:8.3f} ms/sentence  x{ms / reference:.3f}", flush=True)
    if batch_size == 1:
        set_adapter = interleaved_medians({"set_adapter": lambda: slotted.set_adapter("ner")}, repeats * 10)
        result["set_adapter_ms"] = round(set_adapter["set_adapter"] * 1000, 3)
        print(f"set_adapter {result['set_adapter_ms']:.3f} ms", flush=True)
        result["cold_cache"] = cold_cache_cost(base, slotted, batch, repeats)
        result["lora_linear_breakdown"] = lora_linear_cost(unmerged, batch, repeats * 10, reference)
        result["profile_unmerged"] = profile_difference(base, unmerged, batch, calls=20)
        result["profile_active_slot"] = profile_difference(base, slotted, batch, calls=20)
    return result


def cold_cache_cost(base, slotted, batch: dict, repeats: int) -> dict:
    """The active slot when every forward has to form its merged weights again (an adapter the cache does not hold),
    against the backbone; timed apart from the other ways, since it empties the cache they share."""

    def cold_cache():
        set_weight_cache(slotted, len(SLOTS))
        slotted(**batch)

    timings = interleaved_medians({"backbone": lambda: base(**batch), "cold_cache": cold_cache}, repeats)
    cold_ms, added_ms = timings["cold_cache"] * 1000, (timings["cold_cache"] - timings["backbone"]) * 1000
    print(f"cold cache {cold_ms:.3f} ms, {added_ms:.3f} ms over the backbone", flush=True)
    return {
        "ms_per_sentence": round(cold_ms, 3),
        "vs_backbone": round(timings["cold_cache"] / timings["backbone"], 3),
        "added_ms": round(added_ms, 3),
    }


def profile_difference(base, slotted, batch: dict, calls: int) -> dict:
    """Per forward, the operators the active slot runs that the backbone does not, with their self CPU ms (under
    torch.profiler; the two models are profiled one after the other, so only these rows are comparable)."""
    from torch.profiler import profile

    def per_operator(model) -> dict[str, tuple[int, float]]:
        with profile() as profiler:
            for _ in range(calls):
                model(**batch)
        return {e.key: (e.count // calls, e.self_cpu_time_total / 1000 / calls) for e in profiler.key_averages()}

    plain, slot = per_operator(base), per_operator(slotted)
    added = {
        name: {
            "calls_added": count - plain.get(name, (0, 0.0))[0],
            "ms_added": round(ms - plain.get(name, (0, 0.0))[1], 4),
        }
        for name, (count, ms) in slot.items()
    }
    extra = {name: row for name, row in added.items() if row["calls_added"] > 0}  # operators only the slot runs
    print(f"profile: operators the slot adds per forward: {extra}", flush=True)
    return {"calls": calls, "operators_added": extra}


def lora_linear_cost(slotted, batch: dict, repeats: int, backbone_ms: float) -> dict:
    """What the active slot's LoRA linears add over their base linears on a batch-1 input (each timed against its own
    base layer, in turn), summed against the backbone's whole forward: the overhead the active slot should cost."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in slotted.modules() if isinstance(m, LoraLayer)]
    added, lora_total, base_total = 0.0, 0.0, 0.0
    for layer in layers:
        hidden = torch.randn(1, batch["input_ids"].shape[1], layer.in_features)
        timings = interleaved_medians(
            {"lora": lambda: layer(hidden), "base": lambda: layer.base_layer(hidden)},  # noqa: B023 (used at once)
            repeats,
        )
        lora_total, base_total = lora_total + timings["lora"], base_total + timings["base"]
        added += timings["lora"] - timings["base"]
    added_ms = added * 1000
    share = added_ms / backbone_ms
    print(f"the {len(layers)} LoRA linears add {added_ms:.3f} ms = {share:.1%} of the backbone forward", flush=True)
    return {
        "lora_linears": len(layers),
        "base_linears_ms": round(base_total * 1000, 4),
        "lora_linears_ms": round(lora_total * 1000, 4),
        "added_ms": round(added_ms, 4),
        "expected_vs_backbone": round(1 + share, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="offline:minilm-l6")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--output", default="bench/results/serving.json")
    args = parser.parse_args()

    from mtpf.data.conll import read_conll
    from mtpf.release import load_mtpf_encoder
    from mtpf.slots import attach_slots

    torch.manual_seed(0)
    base, tokenizer = load_mtpf_encoder(args.backbone, tasks=SLOTS)
    base.eval()
    unmerged = attach_slots(copy.deepcopy(base), SLOTS).eval()
    with torch.no_grad():
        for name, param in unmerged.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.01)
    unmerged.set_adapter("ner")
    slotted = attach_slots(copy.deepcopy(base), SLOTS, fused=True).eval()  # as `mtpf serve` loads them
    slotted.load_state_dict(unmerged.state_dict())
    set_weight_cache(slotted, len(SLOTS))  # what the default --merged_weights_mb holds for this release
    slotted.set_adapter("ner")
    merged = copy.deepcopy(unmerged).merge_and_unload().eval()  # the ner slot folded into the weights
    sentences = [" ".join(s.tokens) for s in read_conll(DATA)[:64] if len(s.tokens) > 5][:32]

    torch.set_grad_enabled(False)
    models = {"base": base, "slotted": slotted, "unmerged": unmerged, "merged": merged}
    results = {f"batch_{size}": measure(size, models, tokenizer, sentences, args.repeats) for size in (1, 32)}
    write_report(args.output, " ".join(["python", *sys.argv]), results)


if __name__ == "__main__":
    main()
