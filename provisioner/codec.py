"""Optional payload encryption: an AES-GCM `PayloadCodec` with key rotation by key id.

With `PROVISIONER_CODEC_KEYS` set (`id:base64key,id:base64key`, the first is current), every payload the clients and
workers hand to Temporal (inputs, results, queries, summaries, failure details) is stored encrypted: the whole
original payload, metadata included, is sealed with the current key, and the key's id travels in the clear in the
`encryption-key-id` metadata so that older payloads still decode after a rotation as long as their key stays
configured. Payloads that were never encrypted (history written before encryption was turned on) decode unchanged.

Search attributes are not payloads the codec sees: Temporal indexes them, so they stay readable (slug, template,
status). The Temporal UI and CLI read encrypted histories through the codec endpoint (provisioner/api/codec.py).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from provisioner.settings import Secret, Settings

ENCODING_METADATA = "encoding"
ENCRYPTED_ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
NONCE_BYTES = 12  # AES-GCM's standard nonce; random per payload
KEY_BYTES = (16, 24, 32)  # AES-128, AES-192, AES-256
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class CodecConfigurationError(ValueError):
    """PROVISIONER_CODEC_KEYS is malformed. The message names the key id or position, never key material."""


class PayloadDecryptionError(ValueError):
    """An encrypted payload cannot be decrypted: its key id is not configured, or it was tampered with."""


def generate_key() -> str:
    """A new random AES-256 key, base64, as PROVISIONER_CODEC_KEYS expects it."""
    return base64.b64encode(AESGCM.generate_key(bit_length=256)).decode("ascii")


def codec_for(settings: Settings) -> EncryptionCodec | None:
    """The codec of `settings.codec_keys`, or None when no key is configured (payloads stay in clear)."""
    keys = parse_codec_keys(settings.codec_keys)
    return EncryptionCodec(keys) if keys else None


def parse_codec_keys(configured: Secret) -> dict[str, bytes]:
    """`id:base64key,id:base64key` as an ordered mapping of key id to key (the first entry is the current key)."""
    keys: dict[str, bytes] = {}
    for position, entry in enumerate((part.strip() for part in configured.reveal().split(",")), start=1):
        if not entry:
            continue
        key_id, separator, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not separator or not KEY_ID_PATTERN.fullmatch(key_id):
            raise CodecConfigurationError(
                f"PROVISIONER_CODEC_KEYS entry {position} must be `id:base64key` with an id of letters, digits, "
                "'.', '_' or '-'"
            )
        if key_id in keys:
            raise CodecConfigurationError(f"PROVISIONER_CODEC_KEYS names key id {key_id!r} twice")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except binascii.Error:
            raise CodecConfigurationError(f"PROVISIONER_CODEC_KEYS key {key_id!r} is not valid base64") from None
        if len(key) not in KEY_BYTES:
            raise CodecConfigurationError(
                f"PROVISIONER_CODEC_KEYS key {key_id!r} is {len(key)} bytes; AES needs 16, 24 or 32"
            )
        keys[key_id] = key
    return keys


class EncryptionCodec(PayloadCodec):
    """Encrypts with the current key; decrypts with whichever configured key a payload's key id names."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        if not keys:
            raise CodecConfigurationError("the encryption codec needs at least one key")
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._current_key_id = next(iter(keys))

    @classmethod
    def from_secret(cls, configured: Secret) -> EncryptionCodec:
        return cls(parse_codec_keys(configured))

    @property
    def current_key_id(self) -> str:
        return self._current_key_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._ciphers)

    def __repr__(self) -> str:
        return f"EncryptionCodec(current_key_id={self._current_key_id!r}, key_ids={self.key_ids!r})"

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(payload) for payload in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        key_id = self._current_key_id
        nonce = os.urandom(NONCE_BYTES)
        # The key id is authenticated data: relabelling a payload with another id fails like tampering does.
        sealed = self._ciphers[key_id].encrypt(nonce, payload.SerializeToString(), key_id.encode())
        return Payload(
            metadata={ENCODING_METADATA: ENCRYPTED_ENCODING, KEY_ID_METADATA: key_id.encode()},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get(ENCODING_METADATA) != ENCRYPTED_ENCODING:
            return payload  # never encrypted (e.g. written before encryption was configured)
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode("utf-8", errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadDecryptionError(
                f"payload encrypted with key id {key_id!r}, which is not configured "
                f"(configured: {', '.join(self.key_ids)}); add that key to PROVISIONER_CODEC_KEYS"
            )
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            plaintext = cipher.decrypt(nonce, sealed, key_id.encode())
        except (InvalidTag, ValueError):
            raise PayloadDecryptionError(
                f"payload encrypted with key id {key_id!r} failed authentication: it was altered or truncated"
            ) from None
        return Payload.FromString(plaintext)
