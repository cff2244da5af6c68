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

import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from mtpf.serve.engine import Engine, ServeError
from mtpf.serve.registry import AppRegistry
from mtpf.serve.routes import ClientGone, ServeOptions, ServerState, all_routers
from mtpf.serve.schemas import ERROR_CODES, _error, check_texts

logger = logging.getLogger(__name__)
__all__ = ["ServeOptions", "create_app"]


def create_app(engine: Engine, options: ServeOptions | None = None, registry: AppRegistry | None = None) -> FastAPI:
    """The FastAPI application: the routers of `routes.py` over one shared state, the body guard, and errors in
    OpenAI's shape; /openapi.json and /docs behind the API key when there is one."""
    state = ServerState(engine, options or ServeOptions(), registry or AppRegistry(None))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.batcher.start()
        yield
        await state.batcher.stop()  # uvicorn has stopped accepting; queued rows are finished first
        state.tokenizing.shutdown(wait=True)

    protected = state.options.api_key is not None  # then the schema and its docs page need the key as well
    schema_url, docs_url = (None, None) if protected else ("/openapi.json", "/docs")
    app = FastAPI(title="mtpf serve", lifespan=lifespan, redoc_url=None, openapi_url=schema_url, docs_url=docs_url)
    app.add_middleware(BodyGuard, limit=state.options.max_body_bytes)
    app.state.engine, app.state.batcher, app.state.metrics = engine, state.batcher, state.metrics
    install_error_handlers(app, state.options.max_inputs)
    if protected:
        add_protected_docs(app, state.authorised)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, err: ServeError) -> JSONResponse:
        state.metrics.requests.labels("", request.url.path, str(err.status)).inc()
        body = _error(str(err), "invalid_request_error", err.param, err.code or ERROR_CODES.get(err.status))
        return JSONResponse(body, err.status)

    for router in all_routers(state):
        app.include_router(router)
    return app


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
                message = (
                    "input holds token ids; this server embeds text only (its own tokenizer reads it). Send "
                    "strings (LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False))."
                )
                return JSONResponse(_error(message, "invalid_request_error", "input", "invalid_value"), 400)
            texts = [given] if isinstance(given, str) else given
            if isinstance(texts, list) and all(isinstance(t, str) for t in texts):
                try:
                    check_texts(texts, max_inputs)
                except ServeError as problem:
                    return JSONResponse(_error(str(problem), "invalid_request_error", "input", "invalid_value"), 422)
        if where == "dimensions":  # OpenAI's clients pass it through; say plainly what this server does
            dimension = first.get("ctx", {}).get("ge", first.get("ctx", {}).get("le"))
            message = (
                f"dimensions {first.get('input')}: this server returns {dimension}-dimensional embeddings and "
                "does not support truncating them; leave dimensions out."
            )
            return JSONResponse(_error(message, "invalid_request_error", "dimensions", "invalid_value"), 400)
        message = (
            "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}" for e in problems[:3]
            )
            or "invalid request"
        )
        field_name = where.split(".")[0] or None  # the body field at fault (a union adds its member to the path)
        return JSONResponse(_error(message, "invalid_request_error", field_name, "invalid_value"), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if err.status_code < 500 else "server_error"
        body = _error(str(err.detail), kind, code=ERROR_CODES.get(err.status_code))
        return JSONResponse(body, err.status_code, headers=err.headers)  # a 405 keeps its Allow header

    @app.exception_handler(ClientGone)
    async def gone(request: Request, err: ClientGone) -> Response:
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def failed(request: Request, err: Exception) -> JSONResponse:
        logger.error("request failed: %s: %s", type(err).__name__, err)
        return JSONResponse(_error(f"inference failed: {type(err).__name__}: {err}", "server_error"), 500)


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
