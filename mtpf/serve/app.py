"""The HTTP side of `mtpf serve` (FastAPI): endpoints, input checks, API key, body limit, metrics.

    POST /v1/embeddings   {"model": "tc", "input": "text" | ["text", ...]}    OpenAI-compatible response
    POST /v1/ner          {"model": APP, "input": ...}   entities with character offsets, per input
    POST /v1/classify     {"model": APP, "input": ...}   label and score, per input
    GET  /v1/models       what is served;   POST /v1/apps {"name", "path"};   DELETE /v1/apps/NAME
    GET  /health          liveness (no key needed);   GET /metrics   Prometheus text

Bad input is a 4xx naming what is wrong (`input[3]`, the model, the size), never a 500; a 500 means a forward
failed, and only that batch's requests get it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field

from mtpf.serve.batching import BatchStats, MicroBatcher
from mtpf.serve.engine import Engine, Row, ServeError

logger = logging.getLogger(__name__)


@dataclass
class ServeOptions:
    max_batch_tokens: int = 8192
    max_wait_ms: float = 5.0
    max_inputs: int = 256  # texts per request
    max_body_bytes: int = 2_000_000
    api_key: str | None = None


class TextsRequest(BaseModel):
    model: str = Field(description="A served name: base, a slot (tc, ner) or an app.")
    input: str | list[str] = Field(description="One text or a list of texts.")


class EmbeddingsRequest(TextsRequest):
    encoding_format: str = Field(default="float", description="Only 'float'.")


class AppRequest(BaseModel):
    name: str
    path: str


class Metrics:
    """Prometheus series of one server (its own registry, so servers in one process do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mtpf_requests", "Requests answered", ["model", "endpoint", "status"],
                                registry=self.registry)  # fmt: skip
        self.latency = Histogram("mtpf_request_seconds", "Request latency", ["model", "endpoint"],
                                 registry=self.registry)  # fmt: skip
        self.queue = Histogram("mtpf_queue_seconds", "Time a row waited for its batch", registry=self.registry)
        self.batch_rows = Histogram("mtpf_batch_rows", "Rows per forward", registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))  # fmt: skip
        self.batch_tokens = Histogram("mtpf_batch_padded_tokens", "Padded tokens per forward", registry=self.registry,
                                      buckets=(64, 256, 1024, 2048, 4096, 8192, 16384))  # fmt: skip
        self.abandoned = Counter("mtpf_abandoned_rows", "Rows whose client went away", registry=self.registry)

    def batch(self, stats: BatchStats) -> None:
        self.batch_rows.observe(stats.rows)
        self.batch_tokens.observe(stats.padded_tokens)
        for seconds in stats.queue_seconds:
            self.queue.observe(seconds)


class BodyGuard:
    """ASGI middleware: a body over `limit` bytes is answered 413, one that is not UTF-8 400 naming the byte,
    before any handler parses it."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left while sending
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await self._too_large(scope, receive, send)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as err:
            message = f"request body is not UTF-8 text (byte {err.start}: {err.reason})"
            return await JSONResponse(_error(message, "invalid_request"), 400)(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later: disconnect notices

        return await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send):
        response = JSONResponse(_error(f"request body over {self.limit} bytes", "request_too_large"), 413)
        await response(scope, receive, send)


def _error(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind}}


def create_app(engine: Engine, options: ServeOptions | None = None) -> FastAPI:
    options = options or ServeOptions()
    metrics = Metrics()
    batcher = MicroBatcher(engine.run, options.max_batch_tokens, options.max_wait_ms, metrics.batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()  # uvicorn has stopped accepting; queued rows are finished first

    app = FastAPI(title="mtpf serve", lifespan=lifespan)
    app.add_middleware(BodyGuard, limit=options.max_body_bytes)
    app.state.engine, app.state.batcher, app.state.metrics = engine, batcher, metrics

    def authorised(request: Request) -> None:
        if options.api_key is None:
            return
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), options.api_key.encode()):
            raise ServeError("missing or wrong API key (send 'Authorization: Bearer KEY' or 'X-API-Key').", 401)

    install_error_handlers(app)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, err: ServeError) -> JSONResponse:
        metrics.requests.labels("", request.url.path, str(err.status)).inc()
        return JSONResponse(_error(str(err), "invalid_request"), err.status)

    async def answer(request: Request, endpoint: str, body: TextsRequest) -> tuple[list, int]:
        """Every input's answer (in order) and the inputs' token count."""
        served = engine.lookup(body.model, endpoint)
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        check_texts(texts, options.max_inputs)
        tokens = engine.count_tokens(texts)
        for index, count in enumerate(tokens):
            if count > engine.max_tokens:
                raise ServeError(f"input[{index}] has {count} tokens; {body.model} reads at most {engine.max_tokens}.",
                                 422)  # fmt: skip
        rows = [Row(served, text, endpoint, count) for text, count in zip(texts, tokens)]
        futures = batcher.submit(rows, tokens)
        with metrics.latency.labels(body.model, endpoint).time():
            results = await until_done_or_gone(request, futures, metrics)
        metrics.requests.labels(body.model, endpoint, "200").inc()
        return results, sum(tokens)

    @app.post("/v1/embeddings", dependencies=[Depends(authorised)])
    async def embeddings(body: EmbeddingsRequest, request: Request):
        if body.encoding_format != "float":
            raise ServeError(f"encoding_format {body.encoding_format!r}: only 'float' is supported.", 422)
        vectors, tokens = await answer(request, "embeddings", body)
        data = [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(vectors)]
        return {"object": "list", "model": body.model, "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip

    @app.post("/v1/ner", dependencies=[Depends(authorised)])
    async def ner(body: TextsRequest, request: Request):
        entities, _ = await answer(request, "ner", body)
        return {"model": body.model, "data": [{"index": i, "entities": e} for i, e in enumerate(entities)]}

    @app.post("/v1/classify", dependencies=[Depends(authorised)])
    async def classify(body: TextsRequest, request: Request):
        labels, _ = await answer(request, "classify", body)
        return {"model": body.model, "data": [{"index": i, **label} for i, label in enumerate(labels)]}

    @app.get("/v1/models", dependencies=[Depends(authorised)])
    async def models():
        return {"object": "list", "data": [served.describe() for served in engine.served.values()]}

    @app.post("/v1/apps", dependencies=[Depends(authorised)], status_code=201)
    async def add_app(body: AppRequest):
        served = await batcher.call(engine.add_app, body.name, body.path)  # between batches, on the forward thread
        return served.describe()

    @app.delete("/v1/apps/{name}", dependencies=[Depends(authorised)])
    async def remove_app(name: str):
        await batcher.call(engine.remove_app, name)
        return {"deleted": name}

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": len(engine.served)}

    @app.get("/metrics", dependencies=[Depends(authorised)])
    async def prometheus():
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def check_texts(texts: list[str], max_inputs: int) -> None:
    if not texts:
        raise ServeError("input is empty; send a text or a list of texts.", 422)
    if len(texts) > max_inputs:
        raise ServeError(f"input has {len(texts)} texts; at most {max_inputs} per request.", 422)
    for index, text in enumerate(texts):
        if not text.strip():
            raise ServeError(f"input[{index}] is empty.", 422)


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


class ClientGone(Exception):
    """The client closed the connection; there is nobody to answer."""


def install_error_handlers(app: FastAPI) -> None:
    """A client that left gets no response; a failed forward is a 500 naming the failure."""

    @app.exception_handler(ClientGone)
    async def gone(request: Request, err: ClientGone) -> Response:
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def failed(request: Request, err: Exception) -> JSONResponse:
        logger.error("request failed: %s: %s", type(err).__name__, err)
        return JSONResponse(_error(f"inference failed: {type(err).__name__}: {err}", "server_error"), 500)
