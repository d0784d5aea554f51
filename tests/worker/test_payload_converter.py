"""The data converter: the SDK's pydantic wire format, with TypeAdapters shared by the converter of every run."""

from __future__ import annotations

from datetime import timedelta

from temporalio.contrib.pydantic import PydanticPayloadConverter

from provisioner.contracts import ProjectSpec, TeardownSpec
from provisioner.temporal import DATA_CONVERTER, ProvisionerPayloadConverter, _shared_type_adapter


def test_payloads_are_the_sdk_pydantic_converters_both_ways() -> None:
    values = [
        ProjectSpec(slug="shop", display_name="Shop", template="web-service", parameters={"owner": "payments"}),
        TeardownSpec(slug="shop", delete_repository=True, deletion_timeout=timedelta(minutes=3)),
    ]
    ours = DATA_CONVERTER.payload_converter.to_payloads(values)
    assert ours == PydanticPayloadConverter().to_payloads(values)
    assert PydanticPayloadConverter().from_payloads(ours, [ProjectSpec, TeardownSpec]) == values
    assert DATA_CONVERTER.payload_converter.from_payloads(ours, [ProjectSpec, TeardownSpec]) == values


def test_a_new_converter_reuses_the_type_adapters_of_earlier_ones() -> None:
    """The worker makes a converter per workflow run; none of them may rebuild an adapter another one built."""
    payloads = ProvisionerPayloadConverter().to_payloads([TeardownSpec(slug="shop")])
    ProvisionerPayloadConverter().from_payloads(payloads, [TeardownSpec])
    built = _shared_type_adapter.cache_info().misses
    decoded = [ProvisionerPayloadConverter().from_payloads(payloads, [TeardownSpec])[0] for _ in range(5)]
    assert decoded == [TeardownSpec(slug="shop")] * 5
    assert _shared_type_adapter.cache_info().misses == built
