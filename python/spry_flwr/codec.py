"""Flower records <-> the bindings' {name: float32 ndarray} dicts, and payload byte counts."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

# Message layout (per-epoch and per-iteration alike):
#   content["arrays"]  ArrayRecord: the tensors the node's clients train (server -> node), or
#                      "<client>/<name>" trained tensors / "<client>/exact/<name>" gradients /
#                      "<client>/jvp" K scalars (node -> server)
#   content["context"] ArrayRecord: the other global tensors the forward pass reads
#   content["config"]  ConfigRecord: round, step, seed, clients, "assigned.<client>", k, method, mode
#   content["metrics"] MetricRecord: "n-examples.<client>", "loss.<client>", "skipped.<client>",
#                      "peak-rss-mib", "seconds"


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """{name: ndarray} -> ArrayRecord (float32, C-contiguous)."""
    return ArrayRecord(
        {k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()}
    )


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> {name: ndarray}, dtypes kept (the server checks them)."""
    return {k: v.numpy() for k, v in record.items()}


def record_bytes(record: ArrayRecord | None) -> int:
    """Payload bytes of an ArrayRecord as serialised (each array's .npy bytes)."""
    if record is None:
        return 0
    return sum(len(a.data) for a in record.values())


def content_bytes(content) -> int:
    """Payload bytes of every ArrayRecord of a RecordDict (config and metrics not counted)."""
    return sum(record_bytes(v) for v in content.values() if isinstance(v, ArrayRecord))


def split_client_keys(arrays: dict[str, np.ndarray]) -> dict[int, dict[str, np.ndarray]]:
    """{"<client>/<rest>": a} -> {client: {rest: a}}; a key without a client prefix raises."""
    out: dict[int, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        client, sep, rest = key.partition("/")
        if not sep or not client.isdigit():
            raise ValueError(f"key `{key}` names no client")
        out.setdefault(int(client), {})[rest] = value
    return out
