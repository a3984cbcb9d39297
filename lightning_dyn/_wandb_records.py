"""Read an offline W&B run (``run-<id>.wandb``) back: its name, group, tags, config, history.

An offline run keeps everything in one transaction log: the W&B header (``:W&B``, a two-byte
magic and a version byte), then the LevelDB log format, 32 KiB blocks of chunks with a 7-byte
header (CRC32C, length, kind: full, first, middle or last), each record a protobuf
``wandb.proto.wandb_internal_pb2.Record``. The wandb package reads it in its Go core only, so
``lightning-dyn report`` and the tests read it here (the record types come from wandb).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_HEADER = 7  # ":W&B", magic 0xBEE1, version
_BLOCK = 32 * 1024
_CHUNK_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> Iterator[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a W&B transaction log: the file does not start with ':W&B'")
    position, pending = _HEADER, b""
    while position + _CHUNK_HEADER <= len(data):
        room = _BLOCK - position % _BLOCK
        if room < _CHUNK_HEADER:  # the block's tail is padding
            position += room
            continue
        length, kind = struct.unpack_from("<HB", data, position + 4)
        start = position + _CHUNK_HEADER
        chunk = data[start : start + length]
        position = start + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""
        else:  # zeros: the rest of a block never written
            position += room - _CHUNK_HEADER - length


def read_records(path: str | Path) -> Iterator[Any]:
    """The protobuf records of ``path`` in the order they were written."""
    from wandb.proto import wandb_internal_pb2

    for payload in _payloads(Path(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def read_offline_run(path: str | Path) -> dict[str, Any]:
    """``{"id", "name", "group", "tags", "config", "history", "summary"}`` of an offline run.

    ``path``: the ``run-<id>.wandb`` file or the ``offline-run-*`` folder holding it. The
    config is flat as logged (``{"optimizer.lr": 0.01, ...}``); ``history`` is the list
    of logged rows, each ``{key: value}``.
    """
    path = Path(path)
    if path.is_dir():
        (path,) = path.glob("run-*.wandb")
    run: dict[str, Any] = {"config": {}, "history": [], "summary": {}}
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            info = record.run
            run.update(id=info.run_id, name=info.display_name, group=info.run_group)
            run["tags"] = list(info.tags)
            updates = info.config.update
        elif kind == "config":
            updates = record.config.update
        elif kind == "history":
            run["history"].append({_key(i): json.loads(i.value_json) for i in record.history.item})
            continue
        elif kind == "summary":
            run["summary"].update(
                {_key(i): json.loads(i.value_json) for i in record.summary.update}
            )
            continue
        else:
            continue
        for item in updates:
            value = json.loads(item.value_json)
            # W&B wraps config values as {"value": v} (and "desc"); unwrap them.
            run["config"][_key(item)] = (
                value.get("value", value) if isinstance(value, dict) else value
            )
    return run
