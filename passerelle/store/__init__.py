"""Durable on-disk queue of CBOR records (see :mod:`passerelle.store.segments`)."""

from .segments import (
    EVICTION_CAUSES,
    Batch,
    DurableStore,
    StoreClosed,
    StoreError,
    StoreFull,
    StoreStats,
)

__all__ = [
    "EVICTION_CAUSES",
    "DurableStore",
    "Batch",
    "StoreClosed",
    "StoreError",
    "StoreFull",
    "StoreStats",
]
