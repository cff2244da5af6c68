"""The HTTP contract of `mtpf serve`: request bodies as this server's schema states them (its limits included), the
error shape (OpenAI's, which its clients read) and which errors each route may answer."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, create_model

from mtpf.apps.kinds import AppKind
from mtpf.serve.engine import ServeError

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
            default=None,
            ge=dimension,
            le=dimension,
            description=f"Only {dimension} (the model's own; truncation is not supported) or left out.",
        )

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
    reasons = {
        400: "Bad input",
        401: "Missing or wrong API key",
        404: "Not served or not found",
        409: "Conflicts with what is served",
        413: "Body too large",
        422: "Invalid request",
        500: "A forward failed (this request only)",
    }
    return {status: {"model": ErrorResponse, "description": reasons[status]} for status in statuses}


COMMON_ERRORS = (400, 401, 413, 422)  # bad bodies, the key, the size guard, request validation
TEXT_ERRORS = errors(*COMMON_ERRORS, 404, 409, 500)


def _error(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error body: the official clients read `message` into their exception."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


ERROR_CODES = {401: "invalid_api_key", 404: "model_not_found", 409: "conflict", 413: "request_too_large"}


def check_texts(texts: list[str], max_inputs: int) -> None:
    if not texts:
        raise ServeError("input is empty; send a text or a list of texts.", 422)
    if len(texts) > max_inputs:
        raise ServeError(f"input has {len(texts)} texts; at most {max_inputs} per request.", 422)
    for index, text in enumerate(texts):
        if not text.strip():
            raise ServeError(f"input[{index}] is empty.", 422)
