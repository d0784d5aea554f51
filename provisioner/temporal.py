"""Temporal plumbing shared by the worker, the client and the tests: the data converter and connections."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from pydantic import TypeAdapter
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter, pydantic_data_converter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
)
from temporalio.envconfig import ClientConfigProfile
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode

from provisioner.codec import codec_for
from provisioner.contracts import SEARCH_ATTRIBUTES
from provisioner.settings import Settings

# One pydantic TypeAdapter per type for the whole process. Bounded: a type defined in a sandboxed workflow module is
# a new class in every run (none is decoded today; the contracts' types are passed through, hence shared).
_shared_type_adapter = functools.lru_cache(maxsize=256)(TypeAdapter)


class _SharedAdaptersJSONConverter(PydanticJSONPlainPayloadConverter):
    """The SDK's pydantic JSON converter, with its TypeAdapters shared by every instance.

    The worker builds a payload converter for each workflow run it starts (in its sandbox), and the SDK's adapter
    cache lives in the converter instance, so every run rebuilt the adapter (a pydantic schema build) of each type it
    decoded: most of the CPU of starting a run's sandbox. Same payloads, same validation.
    """

    def from_payload(self, payload: Payload, type_hint: type | None = None) -> Any:
        try:
            adapter = _shared_type_adapter(type_hint if type_hint is not None else Any)
        except TypeError:  # an unhashable hint, or one pydantic cannot adapt: as the SDK handles it
            return super().from_payload(payload, type_hint)
        return adapter.validate_json(payload.data)


class ProvisionerPayloadConverter(CompositePayloadConverter):
    """`temporalio.contrib.pydantic.PydanticPayloadConverter` with `_SharedAdaptersJSONConverter` for JSON."""

    def __init__(self) -> None:
        json_converter = _SharedAdaptersJSONConverter()
        super().__init__(
            *(
                json_converter if isinstance(converter, JSONPlainPayloadConverter) else converter
                for converter in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


# pydantic's converter understands dataclasses, enums, datetime and timedelta; every client and worker must use it.
DATA_CONVERTER: DataConverter = dataclasses.replace(
    pydantic_data_converter, payload_converter_class=ProvisionerPayloadConverter
)


def data_converter_for(settings: Settings) -> DataConverter:
    """DATA_CONVERTER, encrypting payloads when `settings.codec_keys` are configured (provisioner/codec.py).

    With encryption the failures' messages and stack traces move into their encrypted attributes as well: they
    quote project data too. Clients and workers of one namespace must agree on this.
    """
    codec = codec_for(settings)
    if codec is None:
        return DATA_CONVERTER
    return dataclasses.replace(
        DATA_CONVERTER,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    """Connect using Temporal's environment configuration (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TLS, API key...).

    The profile file and the TEMPORAL_* variables win; the Settings supply the defaults. `runtime` (e.g. one serving
    metrics, provisioner/telemetry.py) is where the client and every worker built on it record; None: the default.
    Payloads are encrypted when the Settings configure codec keys (`data_converter_for`).
    """
    profile = ClientConfigProfile.load()
    config = profile.to_client_connect_config()
    config.setdefault("target_host", settings.temporal_address)
    config.setdefault("namespace", settings.temporal_namespace)
    return await Client.connect(**config, data_converter=data_converter_for(settings), runtime=runtime)


async def register_search_attributes(client: Client, namespace: str) -> None:
    """Register the project search attributes (Keyword) on the namespace; already registered ones are fine.

    On a real cluster an operator runs the equivalent once:
    `temporal operator search-attribute create --name ProjectSlug --type Keyword` (and the same for
    ProjectTemplate and ProjectStatus).
    """
    try:
        listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
        existing = set(listed.custom_attributes)
    except RPCError as error:
        if error.status != RPCStatusCode.UNIMPLEMENTED:  # the time-skipping test server lists nothing
            raise
        existing = set()
    missing = {
        key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for key in SEARCH_ATTRIBUTES if key.name not in existing
    }
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
