"""The HTTP side of `mtpf serve` (FastAPI): endpoints, input checks, API key, body limit, metrics.

    POST /v1/embeddings   {"model": "tc", "input": "text" | ["text", ...], "encoding_format": "float" | "base64"}
                          OpenAI-compatible: the official `openai` client and LangChain work with their defaults
    POST /v1/ner          {"model": APP, "input": ...}   entities with character offsets, per input
    POST /v1/classify     {"model": APP, "input": ...}   label and score, per input
                          (one such route per registered app kind: `mtpf.apps.kinds`)
    GET  /v1/models[/ID]  what is served;   POST /v1/apps {"name", "path"};   DELETE /v1/apps/NAME
    GET  /health          liveness (no key needed);   GET /metrics   Prometheus text

Bad input is a 4xx naming what is wrong (`input[3]`, the model, the size), never a 500; a 500 means a forward
failed, and only that batch's requests get it. Every error, request validation included, has OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`, which its clients read.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import time
from collections import Counter as Tally
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from mtpf.apps import APP_KINDS
from mtpf.apps.kinds import AppKind
from mtpf.serve.batching import BatchStats, MicroBatcher
from mtpf.serve.engine import Engine, Row, ServeError
from mtpf.serve.registry import AppRegistry

logger = logging.getLogger(__name__)


@dataclass
class ServeOptions:
    max_batch_tokens: int = 8192
    max_wait_ms: float = 5.0
    max_inputs: int = 256  # texts per request
    max_body_bytes: int = 2_000_000
    api_key: str | None = None
    drain_seconds: float = 30.0  # how long removing an app waits for its queued requests to be answered


NonBlank = Annotated[str, Field(pattern=r"\S")]  # a text with something to read (JSON Schema: a search)


class TextsRequest(BaseModel):
    model: str = Field(min_length=1, examples=["base"], description="A served name: base, a slot (tc, ner) or an app.")
    input: NonBlank | list[NonBlank] = Field(examples=["Where is my card?"], description="One text or a list of texts.")


class EmbeddingsRequest(TextsRequest):
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="'float' (lists of numbers) or 'base64' (little-endian float32, as OpenAI sends)."
    )
    dimensions: int | None = Field(default=None, ge=1, description="Must equal the model's dimension (no truncation).")
    user: str | None = Field(default=None, description="Accepted and ignored, as OpenAI's clients may send it.")


def request_models(dimension: int, max_inputs: int) -> tuple[type[TextsRequest], type[EmbeddingsRequest]]:
    """The request bodies of this server as its schema states them: at most `max_inputs` texts, and `dimensions`
    only the model's own (token-id inputs, which OpenAI allows, are refused by name in `install_error_handlers`)."""
    texts = Annotated[list[NonBlank], Field(min_length=1, max_length=max_inputs)]

    class Texts(TextsRequest):
        input: NonBlank | texts = Field(examples=["Where is my card?"], description="One text or a list of texts.")

    class Embeddings(EmbeddingsRequest):
        input: NonBlank | texts = Field(examples=["Where is my card?"], description="One text or a list of texts.")
        dimensions: int | None = Field(
            default=None, ge=dimension, le=dimension,
            description=f"Only {dimension} (the model's own; truncation is not supported) or left out.",
        )  # fmt: skip

    Texts.__name__, Embeddings.__name__ = "TextsRequest", "EmbeddingsRequest"
    return Texts, Embeddings


def kind_request_model(kind: AppKind, texts_request: type[TextsRequest], max_inputs: int) -> type[BaseModel]:
    """The body of POST /v1/<endpoint> for an app kind: texts, or one input of the kind's own type (a pair, say) or
    a list of them."""
    if kind.input_type is str:
        return texts_request
    many = Annotated[list[kind.input_type], Field(min_length=1, max_length=max_inputs)]
    return create_model(
        f"{kind.name.title().replace('_', '')}Request",
        model=(str, Field(min_length=1, description=f"A served {kind.name} app.")),
        input=(kind.input_type | many, Field(description="One input or a list of inputs.")),
    )


class AppRequest(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", description="The name requests will use.")
    path: str = Field(min_length=1, description="An app folder written by `mtpf finetune`, on the server.")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape, which its clients read into their exceptions."""

    error: ErrorDetail


def errors(*statuses: int) -> dict:
    """The error answers a route can give, declared in the OpenAPI schema (the contract clients and tests check)."""
    reasons = {400: "Bad input", 401: "Missing or wrong API key", 404: "Not served or not found",
               409: "Conflicts with what is served", 413: "Body too large", 422: "Invalid request",
               500: "A forward failed (this request only)"}  # fmt: skip
    return {status: {"model": ErrorResponse, "description": reasons[status]} for status in statuses}


COMMON_ERRORS = (400, 401, 413, 422)  # bad bodies, the key, the size guard, request validation
TEXT_ERRORS = errors(*COMMON_ERRORS, 404, 409, 500)


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


def _error(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error body: the official clients read `message` into their exception."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


ERROR_CODES = {401: "invalid_api_key", 404: "model_not_found", 409: "conflict", 413: "request_too_large"}


def encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    """A vector as OpenAI encodes it: a list of floats, or base64 of its little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


def create_app(engine: Engine, options: ServeOptions | None = None, registry: AppRegistry | None = None) -> FastAPI:
    options = options or ServeOptions()
    registry = registry or AppRegistry(None)
    metrics = Metrics()
    batcher = MicroBatcher(engine.run, options.max_batch_tokens, options.max_wait_ms, metrics.batch,
                           tenant_of=lambda row: row.served.name)  # fmt: skip
    tokenizing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtpf-tokenize")  # off the event loop
    in_flight: Tally[str] = Tally()  # rows submitted and not yet answered, per served name

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()  # uvicorn has stopped accepting; queued rows are finished first
        tokenizing.shutdown(wait=True)

    protected = options.api_key is not None  # then the schema and its docs page need the key as well
    schema_url, docs_url = (None, None) if protected else ("/openapi.json", "/docs")
    app = FastAPI(title="mtpf serve", lifespan=lifespan, redoc_url=None, openapi_url=schema_url, docs_url=docs_url)
    app.add_middleware(BodyGuard, limit=options.max_body_bytes)
    app.state.engine, app.state.batcher, app.state.metrics = engine, batcher, metrics

    def authorised(request: Request) -> None:
        if options.api_key is None:
            return
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), options.api_key.encode()):
            raise ServeError("missing or wrong API key (send 'Authorization: Bearer KEY' or 'X-API-Key').", 401)

    install_error_handlers(app, options.max_inputs)
    if protected:
        add_protected_docs(app, authorised)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, err: ServeError) -> JSONResponse:
        metrics.requests.labels("", request.url.path, str(err.status)).inc()
        body = _error(str(err), "invalid_request_error", err.param, err.code or ERROR_CODES.get(err.status))
        return JSONResponse(body, err.status)

    async def answer(request: Request, endpoint: str, body: BaseModel, text_of=str) -> tuple[list, int]:
        """Every input's answer (in order) and the inputs' token count; `text_of` makes one input the text the model
        reads (an app kind's inputs may be pairs, say)."""
        served = engine.lookup(body.model, endpoint)
        texts = [text_of(item) for item in (body.input if isinstance(body.input, list) else [body.input])]
        check_texts(texts, options.max_inputs)
        tokens = await asyncio.get_running_loop().run_in_executor(tokenizing, engine.count_tokens, texts)
        for index, count in enumerate(tokens):
            if count > engine.max_tokens:
                raise ServeError(f"input[{index}] has {count} tokens; {body.model} reads at most {engine.max_tokens}.",
                                 422)  # fmt: skip
        served = engine.lookup(body.model, endpoint)  # again: it may have started draining while we tokenised
        rows = [Row(served, text, endpoint, count) for text, count in zip(texts, tokens)]
        in_flight[served.name] += len(rows)
        try:
            futures = batcher.submit(rows, tokens)
            with metrics.latency.labels(body.model, endpoint).time():
                results = await until_done_or_gone(request, futures, metrics)
        finally:
            in_flight[served.name] -= len(rows)
        metrics.requests.labels(body.model, endpoint, "200").inc()
        return results, sum(tokens)

    async def embeddings(body: EmbeddingsRequest, request: Request):
        vectors, tokens = await answer(request, "embeddings", body)
        data = [{"object": "embedding", "index": i, "embedding": encode_vector(vector, body.encoding_format)}
                for i, vector in enumerate(vectors)]  # fmt: skip
        return {"object": "list", "model": body.model, "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip

    def kind_route(kind: AppKind):
        """POST /v1/<endpoint> of an app kind: each input's answer as the kind makes it, with its index."""

        async def route(body: TextsRequest, request: Request):
            answers, _ = await answer(request, kind.endpoint, body, kind.text_of)
            return {"model": body.model, "data": [{"index": i, **a} for i, a in enumerate(answers)]}

        route.__name__ = kind.endpoint
        return route

    # the schema states this server's limits, so clients (and schemathesis) know what a valid request is
    texts_request, embeddings_request = request_models(engine.embedding_dimension, options.max_inputs)
    routes = [("/v1/embeddings", embeddings, embeddings_request)]
    routes += [(f"/v1/{kind.endpoint}", kind_route(kind), kind_request_model(kind, texts_request, options.max_inputs))
               for kind in APP_KINDS.values()]  # fmt: skip
    for path, route, body_type in routes:
        route.__annotations__["body"] = body_type
        app.post(path, dependencies=[Depends(authorised)], responses=TEXT_ERRORS)(route)

    @app.get("/v1/models", dependencies=[Depends(authorised)], responses=errors(*COMMON_ERRORS))
    async def models():
        return {"object": "list", "data": [served.describe() for served in engine.served.values()]}

    @app.get("/v1/models/{name}", dependencies=[Depends(authorised)], responses=errors(*COMMON_ERRORS, 404))
    async def model(name: str):
        served = engine.served.get(name)
        if served is None:
            raise ServeError(f"model {name!r} is not served; served: {sorted(engine.served)}.", 404, param="model")
        return served.describe()

    @app.post("/v1/apps", dependencies=[Depends(authorised)], status_code=201,
              responses=errors(*COMMON_ERRORS, 404, 409))  # fmt: skip
    async def add_app(body: AppRequest):
        served = await batcher.call(engine.add_app, body.name, body.path)  # between batches, on the forward thread
        registry.save(engine.app_folders())  # before the answer: an acknowledged app survives a crash
        return served.describe()

    @app.delete("/v1/apps/{name}", dependencies=[Depends(authorised)], responses=errors(*COMMON_ERRORS, 404, 409))
    async def remove_app(name: str):
        """Stop taking requests for the app, answer the ones already queued (up to drain_seconds), then unload it."""
        served = engine.served.get(name)
        if served is not None and served.kind != "embedding":
            served.draining = True
            deadline = time.monotonic() + options.drain_seconds
            while in_flight[name] > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        try:
            await batcher.call(engine.remove_app, name)
        finally:
            if served is not None:
                served.draining = False
        registry.save(engine.app_folders())
        return {"deleted": name}

    @app.get("/health", responses=errors(400, 413))
    async def health():
        return {"status": "ok", "models": len(engine.served)}

    @app.get("/metrics", dependencies=[Depends(authorised)], response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text"}, **errors(*COMMON_ERRORS)})  # fmt: skip
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


def install_error_handlers(app: FastAPI, max_inputs: int = 256) -> None:
    """A client that left gets no response; a failed forward is a 500 naming the failure; a request the schema
    rejects, or a route that does not exist, gets OpenAI's error shape like every other error."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = err.errors()
        first = problems[0] if problems else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        if where.startswith("input"):  # the server's own words for what is wrong with the texts
            given = err.body.get("input") if isinstance(err.body, dict) else None
            if isinstance(given, list) and given and all(is_token_ids(x) for x in given):
                message = ("input holds token ids; this server embeds text only (its own tokenizer reads it). Send "
                           "strings (LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False)).")  # fmt: skip
                return JSONResponse(_error(message, "invalid_request_error", "input", "invalid_value"), 400)
            texts = [given] if isinstance(given, str) else given
            if isinstance(texts, list) and all(isinstance(t, str) for t in texts):
                try:
                    check_texts(texts, max_inputs)
                except ServeError as problem:
                    return JSONResponse(_error(str(problem), "invalid_request_error", "input", "invalid_value"), 422)
        if where == "dimensions":  # OpenAI's clients pass it through; say plainly what this server does
            dimension = first.get("ctx", {}).get("ge", first.get("ctx", {}).get("le"))
            message = (f"dimensions {first.get('input')}: this server returns {dimension}-dimensional embeddings and "
                       "does not support truncating them; leave dimensions out.")  # fmt: skip
            return JSONResponse(_error(message, "invalid_request_error", "dimensions", "invalid_value"), 400)
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}"
                            for e in problems[:3]) or "invalid request"  # fmt: skip
        field_name = where.split(".")[0] or None  # the body field at fault (a union adds its member to the path)
        return JSONResponse(_error(message, "invalid_request_error", field_name, "invalid_value"), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if err.status_code < 500 else "server_error"
        body = _error(str(err.detail), kind, code=ERROR_CODES.get(err.status_code))
        return JSONResponse(body, err.status_code, headers=err.headers)  # a 405 keeps its Allow header


def is_token_ids(value: object) -> bool:
    """A token id, or a list of them (what OpenAI's clients send when they tokenise themselves)."""
    return isinstance(value, int) or (isinstance(value, list) and all(isinstance(x, int) for x in value))


def add_protected_docs(app: FastAPI, authorised) -> None:
    """/openapi.json and /docs behind the same API key as the API itself."""
    from fastapi.openapi.docs import get_swagger_ui_html

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(authorised)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(authorised)])
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="mtpf serve")

    @app.exception_handler(ClientGone)
    async def gone(request: Request, err: ClientGone) -> Response:
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def failed(request: Request, err: Exception) -> JSONResponse:
        logger.error("request failed: %s: %s", type(err).__name__, err)
        return JSONResponse(_error(f"inference failed: {type(err).__name__}: {err}", "server_error"), 500)
