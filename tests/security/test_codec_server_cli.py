"""`provisioner codec-server` as an operator runs it: a real process configured by the environment, answering the
codec protocol with the configured keys and tokens, and refusing to start without keys."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload

from provisioner.codec import EncryptionCodec, generate_key, parse_codec_keys
from provisioner.settings import Secret
from provisioner.stack import free_port

CURRENT_KEY, OLDER_KEY = generate_key(), generate_key()
KEYS = f"k2:{CURRENT_KEY},k1:{OLDER_KEY}"
TOKEN = f"codec-cli-{uuid.uuid4().hex}"
START_SECONDS = 30.0


def codec_server_env(**overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PROVISIONER_")}
    return {**env, "PROVISIONER_CODEC_KEYS": KEYS, "PROVISIONER_API_TOKENS": TOKEN, **overrides}


def command(port: int) -> list[str]:
    return [sys.executable, "-c", "from provisioner.cli import main; main()", "codec-server", "--port", str(port)]


@pytest.fixture(scope="module")
def codec_server_url() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(command(port), env=codec_server_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            assert process.poll() is None, process.communicate()[0].decode()
            try:
                httpx.post(f"{base_url}/codec/decode", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the codec server did not start"
                time.sleep(0.1)
        yield base_url
    finally:
        process.terminate()
        output = process.communicate(timeout=15)[0].decode()
        assert all(secret not in output for secret in (CURRENT_KEY, OLDER_KEY, TOKEN))  # never logged


async def test_the_codec_server_decodes_with_any_configured_key_and_encodes_with_the_first(
    codec_server_url: str,
) -> None:
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'"hello"')
    [older] = await EncryptionCodec(parse_codec_keys(Secret(f"k1:{OLDER_KEY}"))).encode([plain])
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Namespace": "default"}
    async with httpx.AsyncClient(base_url=codec_server_url, headers=headers) as client:
        decoded = await client.post("/codec/decode", json={"payloads": [json_format.MessageToDict(older)]})
        assert decoded.status_code == 200, decoded.text
        assert decoded.json() == {"payloads": [json_format.MessageToDict(plain)]}
        encoded = await client.post("/codec/encode", json=decoded.json())
        [sealed] = encoded.json()["payloads"]
        assert base64.b64decode(sealed["metadata"]["encryption-key-id"]) == b"k2"
        refused = await client.post("/codec/decode", json=decoded.json(), headers={"Authorization": "Bearer nope"})
        assert refused.status_code == 401


def test_the_codec_server_refuses_to_start_without_keys() -> None:
    finished = subprocess.run(
        command(free_port()),
        env=codec_server_env(PROVISIONER_CODEC_KEYS=""),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode != 0
    assert "PROVISIONER_CODEC_KEYS is empty" in finished.stdout + finished.stderr
    assert "Traceback" not in finished.stdout + finished.stderr
