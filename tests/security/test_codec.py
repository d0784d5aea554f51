"""The AES-GCM payload codec on its own: round trip, rotation by key id, refusals, and the key configuration."""

from __future__ import annotations

import base64
import os

import pytest
from temporalio.api.common.v1 import Payload

from provisioner.codec import (
    ENCRYPTED_ENCODING,
    KEY_ID_METADATA,
    CodecConfigurationError,
    EncryptionCodec,
    PayloadDecryptionError,
    codec_for,
    generate_key,
    parse_codec_keys,
)
from provisioner.contracts import ProjectSpec
from provisioner.settings import Secret, Settings
from provisioner.temporal import DATA_CONVERTER, data_converter_for

PLAINTEXT = b'{"slug":"secret-shop","display_name":"Codec test"}'


def json_payload(data: bytes = PLAINTEXT) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=data)


def keys(*ids: str) -> dict[str, bytes]:
    return {key_id: os.urandom(32) for key_id in ids}


def configured(key_map: dict[str, bytes]) -> Secret:
    return Secret(",".join(f"{key_id}:{base64.b64encode(key).decode()}" for key_id, key in key_map.items()))


async def test_a_payload_round_trips_and_its_data_and_metadata_are_hidden() -> None:
    codec = EncryptionCodec(keys("k1"))
    [encrypted] = await codec.encode([json_payload()])
    assert encrypted.metadata["encoding"] == ENCRYPTED_ENCODING
    assert encrypted.metadata[KEY_ID_METADATA] == b"k1"
    assert b"secret-shop" not in encrypted.SerializeToString()
    assert b"json/plain" not in encrypted.SerializeToString()  # the original metadata is sealed too
    [decoded] = await codec.decode([encrypted])
    assert decoded == json_payload()


async def test_the_same_payload_encrypts_differently_each_time() -> None:
    codec = EncryptionCodec(keys("k1"))
    first, second = await codec.encode([json_payload(), json_payload()])
    assert first.data != second.data


async def test_rotation_old_payloads_decode_and_new_ones_use_the_new_key() -> None:
    old_keys = keys("2024")
    [old_payload] = await EncryptionCodec(old_keys).encode([json_payload()])
    rotated = EncryptionCodec({**keys("2025"), **old_keys})  # the new key first: it is the current one
    assert rotated.current_key_id == "2025"
    [new_payload] = await rotated.encode([json_payload(b"after rotation")])
    assert new_payload.metadata[KEY_ID_METADATA] == b"2025"
    assert await rotated.decode([old_payload, new_payload]) == [json_payload(), json_payload(b"after rotation")]


async def test_an_unknown_key_id_is_a_clear_error() -> None:
    [payload] = await EncryptionCodec(keys("retired")).encode([json_payload()])
    with pytest.raises(PayloadDecryptionError, match=r"key id 'retired', which is not configured \(configured: k2\)"):
        await EncryptionCodec(keys("k2")).decode([payload])


@pytest.mark.parametrize("position", [0, 5, 12, 20, -1])
async def test_a_tampered_ciphertext_is_rejected(position: int) -> None:
    codec = EncryptionCodec(keys("k1"))
    [payload] = await codec.encode([json_payload()])
    data = bytearray(payload.data)
    data[position] ^= 0x01  # nonce, ciphertext or tag
    tampered = Payload(metadata=dict(payload.metadata), data=bytes(data))
    with pytest.raises(PayloadDecryptionError, match="altered or truncated"):
        await codec.decode([tampered])


async def test_a_truncated_payload_and_a_relabelled_key_id_are_rejected() -> None:
    key_map = keys("k1", "k2")
    codec = EncryptionCodec(key_map)
    [payload] = await codec.encode([json_payload()])
    truncated = Payload(metadata=dict(payload.metadata), data=payload.data[:8])
    relabelled = Payload(metadata={**payload.metadata, KEY_ID_METADATA: b"k2"}, data=payload.data)
    for broken in (truncated, relabelled):
        with pytest.raises(PayloadDecryptionError, match="altered or truncated"):
            await codec.decode([broken])


async def test_payloads_that_were_never_encrypted_pass_through_decode() -> None:
    plain = [json_payload(), Payload(metadata={"encoding": b"binary/null"})]
    assert await EncryptionCodec(keys("k1")).decode(plain) == plain


def test_keys_parse_in_order_and_the_first_is_current() -> None:
    key_map = keys("new", "old")
    parsed = parse_codec_keys(Secret(f" {configured(key_map).reveal().replace(',', ' , ')} ,"))
    assert parsed == key_map and list(parsed) == ["new", "old"]
    codec = codec_for(Settings(codec_keys=configured(key_map)))
    assert codec is not None and codec.current_key_id == "new" and codec.key_ids == ("new", "old")


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ("no-separator", "entry 1 must be `id:base64key`"),
        ("bad id:AAAA", "entry 1 must be `id:base64key`"),
        ("k1:not base64!", "key 'k1' is not valid base64"),
        (f"k1:{base64.b64encode(b'short').decode()}", "key 'k1' is 5 bytes; AES needs 16, 24 or 32"),
        (f"k1:{generate_key()},k1:{generate_key()}", "names key id 'k1' twice"),
    ],
)
def test_malformed_keys_are_refused_without_showing_them(entry: str, complaint: str) -> None:
    with pytest.raises(CodecConfigurationError, match=complaint) as raised:
        parse_codec_keys(Secret(entry))
    key_material = entry.partition(":")[2].split(",")[0]
    assert not key_material or key_material not in str(raised.value)


def test_keys_come_from_the_environment_or_a_file_and_never_show() -> None:
    key = generate_key()
    assert len(base64.b64decode(key)) == 32
    settings = Settings.from_env({"PROVISIONER_CODEC_KEYS": f"k1:{key}"})
    assert settings.codec_keys.reveal() == f"k1:{key}"
    assert key not in repr(settings) and key not in str(settings.codec_keys)
    assert key not in repr(codec_for(settings))
    assert Settings.from_env({}).codec_cors_origins == ("http://localhost:8233", "http://127.0.0.1:8233")
    origins = Settings.from_env({"PROVISIONER_CODEC_CORS_ORIGINS": "https://temporal.example/, http://x:8080"})
    assert origins.codec_cors_origins == ("https://temporal.example", "http://x:8080")


async def test_the_data_converter_encrypts_only_when_keys_are_configured() -> None:
    assert data_converter_for(Settings()) is DATA_CONVERTER
    converter = data_converter_for(Settings(codec_keys=Secret(f"k1:{generate_key()}")))
    spec = ProjectSpec(slug="secret-shop", display_name="Shop", template="web-service")
    [payload] = await converter.encode([spec])
    assert payload.metadata["encoding"] == ENCRYPTED_ENCODING and b"secret-shop" not in payload.data
    assert await converter.decode([payload], [ProjectSpec]) == [spec]
    [clear] = await DATA_CONVERTER.encode([spec])
    assert b"secret-shop" in clear.data
    assert await converter.decode([clear], [ProjectSpec]) == [spec]  # history written before encryption
