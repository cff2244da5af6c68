"""The routes of `mtpf serve`, one FastAPI `APIRouter` per resource, over one shared `ServerState`:

    embeddings   POST /v1/embeddings               OpenAI-compatible vectors (float or base64)
    apps by kind POST /v1/<endpoint>               one route per registered app kind (`mtpf.apps.kinds`)
    models       GET  /v1/models, /v1/models/ID    what is served
    admin        POST /v1/apps, DELETE /v1/apps/NAME, GET /health, GET /metrics

Every text route goes through `ServerState.answer`: look the model up, count tokens off the event loop, submit the
rows to the micro-batcher, and wait for the answers (or for the client to leave).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import time
from collections import Counter as Tally
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel

from mtpf.apps import APP_KINDS
from mtpf.apps.kinds import AppKind
from mtpf.serve.batching import BatchStats, MicroBatcher
from mtpf.serve.engine import Engine, Row, ServeError
from mtpf.serve.registry import AppRegistry
from mtpf.serve.schemas import (
    COMMON_ERRORS,
    TEXT_ERRORS,
    AppRequest,
    EmbeddingsRequest,
    TextsRequest,
    check_texts,
    errors,
    kind_request_model,
    request_models,
)


@dataclass
class ServeOptions:
    max_batch_tokens: int = 0  # 0: the engine's own `batch_tokens`
    max_wait_ms: float | None = None  # None: the engine's own `batch_wait_ms`
    max_inputs: int = 256  # texts per request
    max_body_bytes: int = 2_000_000
    api_key: str | None = None
    drain_seconds: float = 30.0  # how long removing an app waits for its queued requests to be answered


class Metrics:
    """Prometheus series of one server (its own registry, so servers in one process do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mtpf_requests", "Requests answered", ["model", "endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "mtpf_request_seconds", "Request latency", ["model", "endpoint"], registry=self.registry
        )
        self.queue = Histogram("mtpf_queue_seconds", "Time a row waited for its batch", registry=self.registry)
        self.batch_rows = Histogram(
            "mtpf_batch_rows", "Rows per forward", registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
        )
        self.batch_tokens = Histogram(
            "mtpf_batch_padded_tokens",
            "Padded tokens per forward",
            registry=self.registry,
            buckets=(64, 256, 1024, 2048, 4096, 8192, 16384),
        )
        self.abandoned = Counter("mtpf_abandoned_rows", "Rows whose client went away", registry=self.registry)
        self.rows_in_flight = Gauge(
            "mtpf_rows_in_flight", "Rows accepted and not yet answered (queued or in a forward)", registry=self.registry
        )

    def batch(self, stats: BatchStats) -> None:
        self.batch_rows.observe(stats.rows)
        self.batch_tokens.observe(stats.padded_tokens)
        for seconds in stats.queue_seconds:
            self.queue.observe(seconds)


class ClientGone(Exception):
    """The client closed the connection; there is nobody to answer."""


@dataclass
class ServerState:
    """What every route shares: the engine, the batcher in front of it, the options, metrics and the app list."""

    engine: Engine
    options: ServeOptions
    registry: AppRegistry
    metrics: Metrics = field(default_factory=Metrics)
    tokenizing: ThreadPoolExecutor = field(  # token counting off the event loop
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtpf-tokenize")
    )
    in_flight: Tally[str] = field(default_factory=Tally)  # rows submitted and not yet answered, per served name
    batcher: MicroBatcher = field(init=False)

    def __post_init__(self) -> None:
        self.batcher = MicroBatcher(
            self.engine.run,
            self.options.max_batch_tokens or self.engine.batch_tokens,
            self.engine.batch_wait_ms if self.options.max_wait_ms is None else self.options.max_wait_ms,
            self.metrics.batch,
            tenant_of=lambda row: row.served.name,
        )

    def authorised(self, request: Request) -> None:
        """The API key, when the server has one (a FastAPI dependency of every route but /health)."""
        if self.options.api_key is None:
            return
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), self.options.api_key.encode()):
            raise ServeError("missing or wrong API key (send 'Authorization: Bearer KEY' or 'X-API-Key').", 401)

    async def answer(self, request: Request, endpoint: str, body: BaseModel, text_of=str) -> tuple[list, int]:
        """Every input's answer (in order) and the inputs' token count; `text_of` makes one input the text the model
        reads (an app kind's inputs may be pairs, say)."""
        engine = self.engine
        engine.lookup(body.model, endpoint)
        texts = [text_of(item) for item in (body.input if isinstance(body.input, list) else [body.input])]
        check_texts(texts, self.options.max_inputs)
        encoded = await asyncio.get_running_loop().run_in_executor(self.tokenizing, engine.encode, texts)
        tokens = [len(text.ids) for text in encoded]  # tokenised once: the batch pads these very ids
        for index, count in enumerate(tokens):
            if count > engine.max_tokens:
                raise ServeError(
                    f"input[{index}] has {count} tokens; {body.model} reads at most {engine.max_tokens}.", 422
                )
        served = engine.lookup(body.model, endpoint)  # again: it may have started draining while we tokenised
        rows = [Row(served, text, endpoint, len(e.ids), e) for text, e in zip(texts, encoded, strict=True)]
        self.in_flight[served.name] += len(rows)
        self.metrics.rows_in_flight.inc(len(rows))
        try:
            futures = self.batcher.submit(rows, tokens)
            with self.metrics.latency.labels(body.model, endpoint).time():
                results = await until_done_or_gone(request, futures, self.metrics)
        finally:
            self.in_flight[served.name] -= len(rows)
            self.metrics.rows_in_flight.dec(len(rows))
        self.metrics.requests.labels(body.model, endpoint, "200").inc()
        return results, sum(tokens)

    async def drain(self, name: str) -> None:
        """Stop taking requests for an app and wait (up to drain_seconds) for the ones already queued."""
        served = self.engine.served.get(name)
        if served is None or served.kind == "embedding":
            return
        served.draining = True
        deadline = time.monotonic() + self.options.drain_seconds
        while self.in_flight[name] > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


async def until_done_or_gone(request: Request, futures: list[asyncio.Future], metrics: Metrics) -> list:
    """The rows' answers; if the client disconnects first, its rows are abandoned (the worker skips them)."""
    gathered = asyncio.gather(*futures)
    while True:
        done, _ = await asyncio.wait({gathered}, timeout=0.05)
        if done:
            return gathered.result()  # a failed batch raises here: a 500 for this request only
        if await request.is_disconnected():
            for future in futures:
                if future.cancel():
                    metrics.abandoned.inc()
            raise ClientGone


def encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    """A vector as OpenAI encodes it: a list of floats, or base64 of its little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


def protected_router(state: ServerState) -> APIRouter:
    return APIRouter(dependencies=[Depends(state.authorised)])


def embeddings_router(state: ServerState, body_type: type[EmbeddingsRequest]) -> APIRouter:
    """POST /v1/embeddings, OpenAI's API: the official client and LangChain work with their defaults."""
    router = protected_router(state)

    async def embeddings(body: EmbeddingsRequest, request: Request) -> dict[str, Any]:
        vectors, tokens = await state.answer(request, "embeddings", body)
        data = [
            {"object": "embedding", "index": i, "embedding": encode_vector(vector, body.encoding_format)}
            for i, vector in enumerate(vectors)
        ]
        return {
            "object": "list",
            "model": body.model,
            "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    embeddings.__annotations__["body"] = body_type  # the schema states this server's limits
    router.post("/v1/embeddings", responses=TEXT_ERRORS)(embeddings)
    return router


def app_kinds_router(state: ServerState, texts_request: type[TextsRequest]) -> APIRouter:
    """POST /v1/<endpoint> for every registered app kind: each input's answer as the kind makes it."""
    router = protected_router(state)
    for kind in APP_KINDS.values():
        route = kind_route(state, kind)
        route.__annotations__["body"] = kind_request_model(kind, texts_request, state.options.max_inputs)
        router.post(f"/v1/{kind.endpoint}", responses=TEXT_ERRORS)(route)
    return router


def kind_route(state: ServerState, kind: AppKind):
    async def route(body: TextsRequest, request: Request) -> dict[str, Any]:
        answers, _ = await state.answer(request, kind.endpoint, body, kind.text_of)
        return {"model": body.model, "data": [{"index": i, **a} for i, a in enumerate(answers)]}

    route.__name__ = kind.endpoint
    return route


def models_router(state: ServerState) -> APIRouter:
    """GET /v1/models and /v1/models/ID: every served name, its kind and the endpoints that answer it."""
    router = protected_router(state)
    engine = state.engine

    @router.get("/v1/models", responses=errors(*COMMON_ERRORS))
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [served.describe() for served in engine.served.values()]}

    @router.get("/v1/models/{name}", responses=errors(*COMMON_ERRORS, 404))
    async def model(name: str) -> dict[str, Any]:
        served = engine.served.get(name)
        if served is None:
            raise ServeError(f"model {name!r} is not served; served: {sorted(engine.served)}.", 404, param="model")
        return served.describe()

    return router


def admin_router(state: ServerState) -> APIRouter:
    """Apps added and removed at run time (kept in the durable app list), health and Prometheus metrics."""
    router = protected_router(state)
    engine, batcher = state.engine, state.batcher

    @router.post("/v1/apps", status_code=201, responses=errors(*COMMON_ERRORS, 404, 409))
    async def add_app(body: AppRequest) -> dict[str, Any]:
        served = await batcher.call(engine.add_app, body.name, body.path)  # between batches, on the forward thread
        state.registry.save(engine.app_folders())  # before the answer: an acknowledged app survives a crash
        return served.describe()

    @router.delete("/v1/apps/{name}", responses=errors(*COMMON_ERRORS, 404, 409))
    async def remove_app(name: str) -> dict[str, str]:
        """Stop taking requests for the app, answer the ones already queued (up to drain_seconds), then unload it."""
        served = engine.served.get(name)
        await state.drain(name)
        try:
            await batcher.call(engine.remove_app, name)
        finally:
            if served is not None:
                served.draining = False
        state.registry.save(engine.app_folders())
        return {"deleted": name}

    @router.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"},
            **errors(*COMMON_ERRORS),
        },
    )
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def health_router(state: ServerState) -> APIRouter:
    """GET /health: liveness, without the API key (load balancers probe it)."""
    router = APIRouter()

    @router.get("/health", responses=errors(400, 413))
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": len(state.engine.served)}

    return router


def all_routers(state: ServerState) -> list[APIRouter]:
    """Every router of the server, its request bodies stating this server's limits (so that clients and schemathesis
    know what a valid request is)."""
    texts_request, embeddings_request = request_models(state.engine.embedding_dimension, state.options.max_inputs)
    return [
        embeddings_router(state, embeddings_request),
        app_kinds_router(state, texts_request),
        models_router(state),
        admin_router(state),
        health_router(state),
    ]
