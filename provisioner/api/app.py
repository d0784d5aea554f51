"""The FastAPI application: `create_app` assembles it, `serve` runs it under uvicorn."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from http import HTTPStatus
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from provisioner.api.auth import INSECURE_ENV, InsecureConfiguration, TokenSet, bearer_auth, insecure_allowed
from provisioner.api.auth import tokens_from_env as configured_tokens
from provisioner.api.codec import CODEC_PATH, codec_app
from provisioner.api.routes import ApiContext, health_router, projects_router
from provisioner.api.schemas import ErrorResponse, StreamEnd, ValidationErrorResponse, request_field_error
from provisioner.codec import CodecConfigurationError, codec_for
from provisioner.settings import Settings
from provisioner.temporal import connect

log = logging.getLogger("provisioner.api")

DESCRIPTION = """Start provisioning projects and follow their progress.

Every `/projects` route needs `Authorization: Bearer <token>`. Validation errors are FastAPI's 422 shape, each item
with a `field` (the dotted path in the request, e.g. `parameters.port`). Datetimes are ISO 8601 (UTC), enums their
string values."""

GRACEFUL_SHUTDOWN_SECONDS = 5
SSE_MEDIA_TYPE = "text/event-stream"
REF_TEMPLATE = "#/components/schemas/{model}"
STREAM_DATA = ("Progress", "StreamEnd")  # the data of `event: progress` and `event: end`


def create_app(settings: Settings, *, client: Client | None = None, tokens: frozenset[str] | None = None) -> FastAPI:
    """The API. Without `client` the app's lifespan connects to Temporal; without `tokens` they are read from the
    environment. Raises `InsecureConfiguration` when there is no token and PROVISIONER_API_INSECURE is not 1."""
    token_set = _token_set(configured_tokens() if tokens is None else tokens)
    context = ApiContext(settings, client)
    app = FastAPI(
        title="provisioner",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=_lifespan(context),
        generate_unique_id_function=_operation_id,
    )
    app.add_exception_handler(RequestValidationError, _validation_failed)  # type: ignore[arg-type]
    app.add_exception_handler(RPCError, _temporal_failed)  # type: ignore[arg-type]
    app.include_router(health_router(context))
    app.include_router(
        projects_router(context),
        dependencies=[Depends(bearer_auth(token_set))],
        responses={
            HTTPStatus.UNAUTHORIZED.value: {"model": ErrorResponse, "description": "Missing or invalid bearer token."},
            HTTPStatus.UNPROCESSABLE_ENTITY.value: {"model": ValidationErrorResponse, "description": "Invalid fields."},
            HTTPStatus.SERVICE_UNAVAILABLE.value: {"model": ErrorResponse, "description": "Temporal is unavailable."},
        },
    )
    _document_event_stream(app)
    codec = codec_for(settings)
    if codec is not None:  # the Temporal UI's and CLI's codec endpoint, behind the same tokens
        app.mount(CODEC_PATH, codec_app(codec, bearer_auth(token_set), settings.codec_cors_origins))
    return app


def create_codec_app(settings: Settings, *, tokens: frozenset[str] | None = None) -> FastAPI:
    """Only the codec endpoint (`provisioner codec-server`), at the same path and with the same tokens as the API's.
    Raises CodecConfigurationError without PROVISIONER_CODEC_KEYS, InsecureConfiguration as `create_app` does."""
    codec = codec_for(settings)
    if codec is None:
        raise CodecConfigurationError("PROVISIONER_CODEC_KEYS is empty: there is nothing to encrypt or decrypt")
    token_set = _token_set(configured_tokens() if tokens is None else tokens)
    app = FastAPI(title="provisioner codec server", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount(CODEC_PATH, codec_app(codec, bearer_auth(token_set), settings.codec_cors_origins))
    return app


class _EmbeddedServer(uvicorn.Server):
    """For a process that owns its signals (`provisioner up`): uvicorn must not install handlers of its own."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def api_server(app: FastAPI, host: str, port: int, *, handle_signals: bool = True) -> uvicorn.Server:
    """A uvicorn server for `app` (port 0 picks a free port: see `server.servers[0].sockets`).

    With `handle_signals=False` it stops only when told (`server.should_exit = True`).
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # the process's logging configuration applies
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,  # open event streams are cut after this
    )
    return uvicorn.Server(config) if handle_signals else _EmbeddedServer(config)


async def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000, *, client: Client | None = None) -> None:
    """Run the API until SIGINT/SIGTERM."""
    await api_server(create_app(settings, client=client), host, port).serve()


def _token_set(tokens: frozenset[str]) -> TokenSet | None:
    if tokens:
        log.info("the API accepts %d bearer token(s)", len(tokens))
        return TokenSet(tokens)
    if not insecure_allowed():
        raise InsecureConfiguration(
            "no API token configured: set PROVISIONER_API_TOKENS or PROVISIONER_API_TOKENS_FILE, "
            f"or {INSECURE_ENV}=1 to run without authentication"
        )
    log.warning("authentication is OFF (%s=1): every request is accepted", INSECURE_ENV)
    return None


def _lifespan(context: ApiContext) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if context.client is None:
            context.client = await connect(context.settings)
            log.info("connected to Temporal namespace %r", context.client.namespace)
        yield

    return lifespan


def _document_event_stream(app: FastAPI) -> None:
    """Complete the generated OpenAPI document where FastAPI cannot: the event stream's payloads (`Progress`,
    then `StreamEnd`) and its error answers, which are JSON although its success is text/event-stream."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        schemas = document["components"]["schemas"]
        stream_end = StreamEnd.model_json_schema(ref_template=REF_TEMPLATE)
        for name, definition in stream_end.pop("$defs", {}).items():
            schemas.setdefault(name, definition)
        schemas["StreamEnd"] = stream_end
        for operation in (op for path in document["paths"].values() for op in path.values()):
            for code, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if SSE_MEDIA_TYPE not in content:
                    continue
                if code.startswith("2"):
                    data = content[SSE_MEDIA_TYPE]["itemSchema"]["properties"]["data"]
                    data["contentMediaType"] = "application/json"
                    data["contentSchema"] = {
                        "oneOf": [{"$ref": REF_TEMPLATE.format(model=name)} for name in STREAM_DATA]
                    }
                else:
                    content["application/json"] = content.pop(SSE_MEDIA_TYPE)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _operation_id(route: APIRoute) -> str:
    # Generated clients name their methods after the operation ids: the route functions' names.
    return route.name


async def _validation_failed(request: Request, error: RequestValidationError) -> JSONResponse:
    items = [request_field_error(item["loc"], item["msg"], item["type"]) for item in error.errors()]
    body = ValidationErrorResponse(detail=items)
    return JSONResponse(body.model_dump(mode="json"), status_code=HTTPStatus.UNPROCESSABLE_ENTITY)


async def _temporal_failed(request: Request, error: RPCError) -> JSONResponse:
    unavailable = error.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED)
    status = HTTPStatus.SERVICE_UNAVAILABLE if unavailable else HTTPStatus.BAD_GATEWAY
    log.warning("Temporal request for %s %s failed: %s", request.method, request.url.path, error)
    body = ErrorResponse(detail=f"Temporal request failed ({error.status.name}): {error.message}")
    return JSONResponse(body.model_dump(mode="json"), status_code=status)
