"""Publish a release folder (one backbone repo, one PEFT adapter repo per task, model cards with eval results) or
an app folder from `mtpf finetune` (its own PEFT repo on top of a published backbone).

    python push_to_hub.py OUT --repo-id ORG/NAME [--results results.json] [--results-model NAME] [--private]
                          [--quality results/quality/summary.json [--quality-recipe NAME]]
                          [--revision BRANCH] [--adapter-repo-pattern "{repo_id}-{task}"] [--dry-run DIR]
    python push_to_hub.py APP --repo-id ORG/APP-NAME --base-repo-id ORG/NAME [--private] [--dry-run DIR]

The token comes from HF_TOKEN or the login cache (`huggingface-cli login`); it is never printed or written.
`--dry-run DIR` writes exactly what would be uploaded to DIR/ORG/NAME and DIR/ORG/NAME-<task> and uploads nothing.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi
from transformers import HfArgumentParser

from mtpf.apps import APP_FILE
from mtpf.hub import DEFAULT_ADAPTER_PATTERN, HubTarget, publish, stage_app, stage_release
from mtpf.quality.card import recipe_quality
from mtpf.results import load_results, records_for_model


@dataclass
class PushArguments:
    release: str = field(metadata={"help": "Release folder (OUT/backbone, OUT/adapters/<task>)."})
    repo_id: str = field(metadata={"help": "Backbone repo ORG/NAME; adapters go to the adapter pattern."})
    results: str | None = field(default=None, metadata={"help": "results.json of the evaluation suite."})
    results_model: str | None = field(default=None, metadata={"help": "Which model of results.json (if several)."})
    private: bool = field(default=False, metadata={"help": "Create private repos."})
    revision: str | None = field(default=None, metadata={"help": "Branch to push to (created if missing)."})
    adapter_repo_pattern: str = field(default=DEFAULT_ADAPTER_PATTERN, metadata={"help": "Adapter repo id pattern."})
    dry_run: str | None = field(default=None, metadata={"help": "Write the repo folders here and upload nothing."})
    endpoint: str | None = field(default=None, metadata={"help": "Hub endpoint (default: HF_ENDPOINT or the Hub)."})
    quality: str | None = field(
        default=None,
        metadata={
            "help": "The quality sweep's summary.json: the card reports how the release's recipe compares with its "
            "base (refused if the release was trained otherwise)."
        },
    )
    quality_recipe: str | None = field(
        default=None, metadata={"help": "Which recipe of --quality (default: the one marked shipped)."}
    )
    base_repo_id: str | None = field(
        default=None, metadata={"help": "App folders: the published backbone repo the app runs on."}
    )


def main(argv: list[str] | None = None) -> list[str]:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):  # the release folder may come first, positionally
        argv = ["--release", argv[0], *argv[1:]]
    (args,) = HfArgumentParser(PushArguments).parse_args_into_dataclasses(args=argv)
    records = records_for_model(load_results(args.results), args.results_model) if args.results else []
    quality = recipe_quality(args.quality, args.quality_recipe) if args.quality else None

    def stage(output: str) -> list:
        if (Path(args.release) / APP_FILE).is_file():
            if not args.base_repo_id:
                raise SystemExit(f"{args.release} is an app: give --base-repo-id, the backbone repo it runs on.")
            return stage_app(args.release, args.repo_id, output, args.base_repo_id, args.revision)
        target = HubTarget(args.repo_id, args.revision, args.adapter_repo_pattern)
        return stage_release(args.release, target, output, records, quality)

    if args.dry_run:
        staged = stage(args.dry_run)
        for repo in staged:
            print(f"[dry run] {repo.repo_id}: {repo.folder}")
        return [repo.repo_id for repo in staged]
    with tempfile.TemporaryDirectory(prefix="mtpf-push-") as staging:
        staged = stage(staging)
        published = publish(staged, HfApi(endpoint=args.endpoint), private=args.private, revision=args.revision)
    for repo_id in published:
        print(f"Published {repo_id}")
    return published


def cli() -> None:
    main(sys.argv[1:])


if __name__ == "__main__":
    cli()
