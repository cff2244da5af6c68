"""The load of `bench/serve_locust.py`: clients posting OpenAI-style embedding requests, as fast as answers come.

Settings come from the environment (the driver sets them per run): BENCH_MODEL (the served model name),
BENCH_TEXTS (texts per request), BENCH_TEXTS_FILE (one text per line; each request takes the next ones),
BENCH_ENDPOINT (`embeddings`, or an app's endpoint such as `classify`: every answer lists one item per text).
"""

import itertools
import os

from locust import FastHttpUser, constant, task

MODEL = os.environ.get("BENCH_MODEL", "base")
PER_REQUEST = int(os.environ.get("BENCH_TEXTS", "1"))
ENDPOINT = "/v1/" + os.environ.get("BENCH_ENDPOINT", "embeddings")
with open(os.environ["BENCH_TEXTS_FILE"], encoding="utf-8") as handle:
    TEXTS = [line.strip() for line in handle if line.strip()]
CYCLE = itertools.cycle(range(len(TEXTS)))


class EmbeddingClient(FastHttpUser):
    wait_time = constant(0)

    @task
    def embed(self) -> None:
        start = next(CYCLE)
        batch = [TEXTS[(start + i) % len(TEXTS)] for i in range(PER_REQUEST)]
        with self.client.post(ENDPOINT, json={"model": MODEL, "input": batch}, catch_response=True) as answer:
            if answer.status_code != 200 or len(answer.json().get("data", [])) != PER_REQUEST:
                answer.failure(f"status {answer.status_code}: {answer.text[:200]}")
