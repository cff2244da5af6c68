"""Publishing a release: one backbone repo, one PEFT adapter repo per task, model cards with eval results.

`stage_release` writes exactly the folders that go to the Hub (also what `--dry-run DIR` keeps: `DIR/ORG/NAME`
and `DIR/ORG/NAME-<task>`, so running from `DIR` resolves every repo id to its folder, offline).
`publish` uploads them with `HfApi`, one commit per repo.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from statistics import stdev

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from mtpf.errors import MtpfError
from mtpf.io import MANIFEST, update_json
from mtpf.quality.card import RecipeQuality, check_trained_with, quality_section
from mtpf.release import ADAPTERS_DIR, BACKBONE_DIR, ReleaseError, release_hash, validate_release
from mtpf.results import ResultRecord, averaged
from mtpf.tasks import result_families

logger = logging.getLogger(__name__)
DEFAULT_ADAPTER_PATTERN = "{repo_id}-{task}"


class PublishError(MtpfError, RuntimeError):
    """Publishing stopped; the message says which repos were already published."""


@dataclass
class StagedRepo:
    repo_id: str
    folder: Path
    kind: str  # "backbone" or the task name


def adapter_repo_ids(repo_id: str, tasks: list[str], pattern: str = DEFAULT_ADAPTER_PATTERN) -> dict[str, str]:
    return {task: pattern.format(repo_id=repo_id, task=task) for task in tasks}


def check_repo_ids(repo_ids: list[str]) -> None:
    for repo_id in repo_ids:
        try:
            validate_repo_id(repo_id)
        except HFValidationError as err:
            raise ValueError(f"Invalid repo id {repo_id!r}: {err}") from err
        if "/" not in repo_id:
            raise ValueError(f"Invalid repo id {repo_id!r}: use ORG/NAME.")


@dataclass(frozen=True)
class HubTarget:
    """Where a release goes on the Hub: its backbone repo, the revision its adapters pin (None: the default branch)
    and how an adapter repo is named from the backbone repo and the task."""

    repo_id: str
    revision: str | None = None
    adapter_pattern: str = DEFAULT_ADAPTER_PATTERN


def stage_release(
    release: str | Path,
    target: HubTarget,
    output: str | Path,
    results: list[ResultRecord] | None = None,
    quality: RecipeQuality | None = None,
) -> list[StagedRepo]:
    """Write the folders to upload under `output/<repo id>`; everything is checked before anything is written.
    `quality`: the sweep's numbers of the recipe the release was trained with (refused if it was trained otherwise)."""
    release, output = Path(release), Path(output)
    repo_id, revision, adapter_pattern = target.repo_id, target.revision, target.adapter_pattern
    tasks = validate_release(release)
    adapters = adapter_repo_ids(repo_id, tasks, adapter_pattern)
    check_repo_ids([repo_id, *adapters.values()])
    results = results or []
    check_results_belong_to(results, release, tasks)
    if quality is not None:
        recorded = json.loads((release / BACKBONE_DIR / "config.json").read_text(encoding="utf-8")).get("pretraining")
        check_trained_with(quality, recorded, str(release))

    backbone_dir = output / repo_id
    shutil.rmtree(backbone_dir, ignore_errors=True)
    shutil.copytree(release / BACKBONE_DIR, backbone_dir)

    def point_slots_at_repos(config: dict) -> None:
        for task, adapter_repo in adapters.items():
            config["task_slots"][task]["adapter"] = adapter_repo

    config = update_json(backbone_dir / "config.json", point_slots_at_repos)
    quality_text = quality_section(quality) if quality else None
    backbone_card(config, target, adapters, results, quality_text).save(backbone_dir / "README.md")
    staged = [StagedRepo(repo_id, backbone_dir, "backbone")]

    for task, adapter_repo in adapters.items():
        folder = output / adapter_repo
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(release / ADAPTERS_DIR / task, folder)
        update_json(
            folder / "adapter_config.json", lambda c: c.update(base_model_name_or_path=repo_id, revision=revision)
        )
        own = [r for r in results if r.family == task]
        adapter_card(task, config, target, adapter_repo, own).save(folder / "README.md")
        staged.append(StagedRepo(adapter_repo, folder, task))
    return staged


def stage_app(
    app_dir: str | Path, repo_id: str, output: str | Path, base_repo_id: str, revision: str | None = None
) -> list[StagedRepo]:
    """An app folder (`mtpf finetune`) as its own PEFT repo whose base is the published backbone `base_repo_id`."""
    from mtpf.apps import read_app

    app_dir, output = Path(app_dir), Path(output)
    app = read_app(app_dir)
    check_repo_ids([repo_id, base_repo_id])
    folder = output / repo_id
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(app_dir, folder, ignore=shutil.ignore_patterns(MANIFEST))  # mtpf's bookkeeping stays home
    update_json(
        folder / "adapter_config.json", lambda c: c.update(base_model_name_or_path=base_repo_id, revision=revision)
    )
    card = (folder / "README.md").read_text(encoding="utf-8")
    card = card.replace(f"`{app['backbone']}`", f"[{base_repo_id}](https://huggingface.co/{base_repo_id})")
    (folder / "README.md").write_text(card.replace('"BACKBONE"', f'"{base_repo_id}"').replace('"APP', f'"{repo_id}'))
    return [StagedRepo(repo_id, folder, app["task"])]


def check_results_belong_to(results: list[ResultRecord], release: Path, tasks: list[str]) -> None:
    """Scores go on a card only if they were measured on these very weights (their config hash)."""
    expected = release_hash(release, tasks)
    other = sorted({str(r.config_hash) for r in results if r.config_hash != expected})
    if other:
        models = sorted({r.model for r in results})
        raise ReleaseError(
            f"The results of {models} were measured on weights with config hash {other}, but {release} has "
            f"{expected}: they belong to another model. Evaluate this release (mtpf-eval --model {release})."
        )


def publish(staged: list[StagedRepo], api: HfApi, private: bool = False, revision: str | None = None) -> list[str]:
    """Create each repo and upload its folder in one commit; on failure say what is already published."""
    done: list[str] = []
    for repo in staged:
        try:
            api.create_repo(repo.repo_id, private=private, exist_ok=True)
            if revision:
                api.create_branch(repo.repo_id, branch=revision, exist_ok=True)
            api.upload_folder(
                repo_id=repo.repo_id,
                folder_path=str(repo.folder),
                revision=revision,
                ignore_patterns=[MANIFEST],  # mtpf's own bookkeeping, not part of the model
                commit_message="mtpf: upload backbone"
                if repo.kind == "backbone"
                else f"mtpf: upload {repo.kind} adapter",
            )
        except Exception as err:  # the Hub client raises many kinds; all end the publish the same way
            published = ", ".join(done) or "none"
            reason = (str(err).splitlines() or [""])[0]
            raise PublishError(
                f"Publishing {repo.repo_id} failed ({type(err).__name__}: {reason}); already published: {published}."
            ) from err
        done.append(repo.repo_id)
        logger.info("Published %s", repo.repo_id)
    return done


# ----- model cards -------------------------------------------------------------------------------------


def eval_results(records: list[ResultRecord]) -> list[EvalResult]:
    """`model-index` entries, one per dataset/split/train fraction/metric (mean over seeds)."""
    out = []
    for record, _ in averaged(records):
        task_type, task_name = result_families()[record.family]
        out.append(
            EvalResult(
                task_type=task_type,
                task_name=task_name,
                dataset_type=record.dataset,
                dataset_name=record.dataset_name or record.dataset,
                dataset_config=card_dataset_config(record),
                dataset_split=record.split,
                dataset_args={"train_fraction": record.fraction},
                metric_type=record.metric,
                metric_name=record.metric,
                metric_value=record.value,
            )
        )
    return out


def card_dataset_config(record: ResultRecord) -> str | None:
    """The model-index groups results by task, dataset, config and split (not args), so a run on a fraction of the
    training data gets its own config name, e.g. `train_fraction=0.1` (`en+train_fraction=0.1` with a config)."""
    if record.fraction == 1.0:
        return record.dataset_config
    suffix = f"train_fraction={record.fraction:g}"
    return f"{record.dataset_config}+{suffix}" if record.dataset_config else suffix


def results_table(records: list[ResultRecord]) -> str:
    if not records:
        return "_No evaluation results were supplied with this release._"
    rows = ["| family | dataset | split | train data | metric | value | seeds |", "|---|---|---|---|---|---|---|"]
    for record, seeds in averaged(records):
        runs = record.experiments or []
        spread = f" ± {stdev(runs):.2f} ({len(runs)} probe experiments)" if len(runs) > 1 and seeds == 1 else ""
        rows.append(
            f"| {record.family} | {record.dataset_name or record.dataset} | {record.split} | {record.fraction:.0%} | "
            f"{record.metric} | {record.value:.2f}{spread} | {seeds} |"
        )
    return "\n".join(rows)


def _recipe(config: dict) -> str:
    recipe = config.get("pretraining")
    if not recipe:
        return "An initial release: the encoder's weights unchanged, identity (untrained) task slots."
    lines = [f"- {key}: `{value}`" for key, value in sorted(recipe.items())]
    return "\n".join(lines)


def _base_model(config: dict) -> str | None:
    recipe = config.get("pretraining") or {}
    backbone = recipe.get("backbone")
    return backbone if backbone and "/" in backbone and not backbone.startswith(("offline:", ".", "/")) else None


def backbone_card(
    config: dict, target: HubTarget, adapters: dict[str, str], results: list[ResultRecord], quality: str | None = None
) -> ModelCard:
    """The backbone repo's card; `quality`: the markdown of `mtpf.quality.card.quality_section`, if any."""
    repo_id, revision = target.repo_id, target.revision
    data = ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="feature-extraction",
        base_model=_base_model(config),
        tags=["mtpf", "task-primary-lora", "multi-task-pre-finetuning", "ner", "text-classification"],
        model_name=repo_id,
        eval_results=eval_results(results) or None,
    )
    rev = f", revision={revision!r}" if revision else ""
    first = next(iter(adapters))
    adapter_lines = "\n".join(f"- `{task}`: [{repo}](https://huggingface.co/{repo})" for task, repo in adapters.items())
    content = f"""---
{data.to_yaml()}
---

# {repo_id}

A shared encoder backbone pre-finetuned with **MTPF-TPL** (multi-task pre-finetuning with task-primary LoRAs) for
named entity recognition and text classification. The backbone stays central; each task's LoRA ships as its
own PEFT adapter repo:

{adapter_lines}

## How to load

```python
from peft import PeftModel
from transformers import AutoModel, AutoTokenizer

backbone = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True{rev})
tokenizer = AutoTokenizer.from_pretrained("{repo_id}", trust_remote_code=True{rev})
model = PeftModel.from_pretrained(backbone, "{adapters[first]}", adapter_name="{first}")
{chr(10).join(f'model.load_adapter("{repo}", adapter_name="{task}")' for task, repo in list(adapters.items())[1:])}
model.set_adapter("tc")
embeddings = model.encode(["A sentence."], tokenizer)  # = outputs.pooler_output: pooling + normalisation of config.json
# or: backbone.load_task_adapters()  # attaches every slot recorded in config.json
```

With sentence-transformers (the `tc` slot merged while loading; without `config_kwargs`, the backbone alone):

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{repo_id}", trust_remote_code=True, config_kwargs={{"active_slot": "tc"}}{rev})
```

`AutoPeftModel` refuses remote-code classes, hence `AutoModel` + `PeftModel`. For NER, load
`AutoModelForTokenClassification` the same way and fine-tune a head (the `ner` adapter initialises its LoRA).

## Training recipe

{_recipe(config)}

## Quality against the base

{quality or "_No quality sweep numbers were supplied with this release._"}

## Evaluation

{results_table(results)}

## Limitations

English only; lightweight encoders trade accuracy for size. Offline releases of this project use substitute data
(small public pair sets, a teacher fine-tuned on WikiANN/wikigold instead of NuNER), so numbers are not the paper's.
"""
    return ModelCard(content)


def adapter_card(task: str, config: dict, target: HubTarget, repo_id: str, results: list[ResultRecord]) -> ModelCard:
    """The card of one slot's adapter repo (`repo_id`), whose base is the backbone repo of `target`."""
    backbone_repo, revision = target.repo_id, target.revision
    task_type, task_name = result_families().get(task, ("feature-extraction", task))
    data = ModelCardData(
        license="apache-2.0",
        library_name="peft",
        pipeline_tag=task_type,
        base_model=backbone_repo,
        tags=["mtpf", "task-primary-lora", "lora", task],
        model_name=repo_id,
        eval_results=eval_results(results) or None,
    )
    rev = f", revision={revision!r}" if revision else ""
    slot = config["task_slots"][task]
    content = f"""---
{data.to_yaml()}
---

# {repo_id}

The **{task}** task-primary LoRA of [{backbone_repo}](https://huggingface.co/{backbone_repo}) ({task_name}):
rank {slot["r"]}, alpha {slot["lora_alpha"]}, on the {", ".join(slot["target_modules"])} linears of layers
{slot["layers"]}{"" if slot.get("trained", True) else " (untrained identity slot)"}.

```python
from peft import PeftModel
from transformers import AutoModel

backbone = AutoModel.from_pretrained("{backbone_repo}", trust_remote_code=True{rev})
model = PeftModel.from_pretrained(backbone, "{repo_id}", adapter_name="{task}")
```

## Evaluation ({task})

{results_table(results)}
"""
    return ModelCard(content)
