"""The remote codec endpoint the Temporal UI and CLI decode encrypted payloads with (Temporal's codec server protocol).

`POST {prefix}/decode` and `POST {prefix}/encode` take and return `{"payloads": [...]}`, each payload in proto3 JSON
(`metadata` values and `data` base64). The UI calls it from the browser, so the configured UI origins get CORS
(preflight included; the UI sends `X-Namespace`, and `Authorization` when told to pass a token). Every call needs the
API's bearer token: whoever can call /decode can read every payload of the namespace.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from provisioner.codec import EncryptionCodec, PayloadDecryptionError

CODEC_PATH = "/codec"
CORS_ALLOWED_HEADERS = ("Authorization", "Content-Type", "X-Namespace")
CORS_MAX_AGE_SECONDS = 600


def codec_app(codec: EncryptionCodec, auth: Callable[..., Awaitable[None]], allowed_origins: Sequence[str]) -> FastAPI:
    """The codec endpoint as an app of its own, to mount at CODEC_PATH: its CORS covers only these two routes."""
    app = FastAPI(title="provisioner codec", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(allowed_origins),
        allow_methods=["POST"],
        allow_headers=list(CORS_ALLOWED_HEADERS),
        allow_credentials=True,  # the UI's "include cross-origin credentials" option
        max_age=CORS_MAX_AGE_SECONDS,
    )
    router = APIRouter(dependencies=[Depends(auth)])

    @router.post("/decode")
    async def decode(request: Request) -> JSONResponse:
        payloads = await _payloads_of(request)
        try:
            decoded = await codec.decode(payloads)
        except PayloadDecryptionError as error:
            raise HTTPException(HTTPStatus.BAD_REQUEST, str(error)) from None
        return _payloads_response(decoded)

    @router.post("/encode")
    async def encode(request: Request) -> JSONResponse:
        return _payloads_response(await codec.encode(await _payloads_of(request)))

    app.include_router(router)
    return app


async def _payloads_of(request: Request) -> list[Payload]:
    try:
        body = json_format.Parse(await request.body(), Payloads())
    except (json_format.ParseError, ValueError) as error:  # ValueError: not UTF-8
        raise HTTPException(HTTPStatus.BAD_REQUEST, f'expected {{"payloads": [...]}} in proto3 JSON: {error}') from None
    return list(body.payloads)


def _payloads_response(payloads: Sequence[Payload]) -> JSONResponse:
    return JSONResponse({"payloads": [json_format.MessageToDict(payload) for payload in payloads]})
