"""Temporal plumbing shared by the worker, the client and the tests: the data converter and connections."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.envconfig import ClientConfigProfile

from provisioner.settings import Settings

# pydantic's converter understands dataclasses, enums, datetime and timedelta; every client and worker must use it.
DATA_CONVERTER: DataConverter = pydantic_data_converter


async def connect(settings: Settings) -> Client:
    """Connect using Temporal's environment configuration (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TLS, API key...).

    The profile file and the TEMPORAL_* variables win; the Settings supply the defaults.
    """
    profile = ClientConfigProfile.load()
    config = profile.to_client_connect_config()
    config.setdefault("target_host", settings.temporal_address)
    config.setdefault("namespace", settings.temporal_namespace)
    return await Client.connect(**config, data_converter=DATA_CONVERTER)
