"""Connecting to Temporal and registering the enrollment search attributes."""

import logging

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from core.contracts import SEARCH_ATTRIBUTES
from core.settings import Settings

log = logging.getLogger(__name__)

_TYPES = {
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "Bool": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
    "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
}


async def connect(settings: Settings, lazy: bool = False) -> Client:
    return await Client.connect(
        settings.temporal_address, namespace=settings.temporal_namespace, lazy=lazy
    )


async def register_search_attributes(client: Client, namespace: str) -> None:
    """Idempotent: attributes that already exist are left as they are."""
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=namespace,
                search_attributes={k: _TYPES[v] for k, v in SEARCH_ATTRIBUTES.items()},
            )
        )
    except RPCError as err:
        if err.status != RPCStatusCode.ALREADY_EXISTS:
            raise
