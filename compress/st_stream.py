"""Streaming safetensors shards: tensors copied byte-for-byte or written without a full-file buffer.

safetensors.torch.save_file serialises a whole shard in memory; a Gemma 4 E4B per-layer
embedding table alone is 5.6 GB in bf16, so shards are written here entry by entry: an
8-byte little-endian header length, the JSON header, then each tensor's raw bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from compress.st_header import read_header

_COPY_CHUNK_BYTES = 64 * 2**20
_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int8: "I8", torch.uint8: "U8", torch.int16: "I16", torch.int32: "I32", torch.int64: "I64",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


@dataclass(frozen=True)
class SourceTensor:
    """One tensor of a source safetensors file, read only when asked (``load``)."""

    key: str
    info: dict
    path: Path
    data_start: int
    handle: object  # the open safe_open file holding it

    def load(self) -> torch.Tensor:
        return self.handle.get_tensor(self.key)


def source_tensors(paths: list[Path]) -> Iterator[SourceTensor]:
    """Every tensor of ``paths`` in file and header order, each file open while its tensors pass."""
    from safetensors import safe_open

    for path in paths:
        header, data_start = read_header(path)
        with safe_open(str(path), framework="pt") as handle:
            for key, info in header.items():
                if key != "__metadata__":
                    yield SourceTensor(key, info, path, data_start, handle)


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    tensor: torch.Tensor | None = None  # written from memory
    source: tuple[Path, int] | None = None  # or copied from (file, absolute byte offset)


class ShardWriter:
    """Collects tensors into shards of at most `max_shard_bytes` and writes them as it goes."""

    def __init__(self, out_dir: Path, max_shard_bytes: int = 2 * 2**30):
        self.out_dir, self.max_shard_bytes = Path(out_dir), max_shard_bytes
        self.pending: list[_Entry] = []
        self.pending_bytes = 0
        self.shards: list[tuple[Path, list[str]]] = []

    def add_tensor(self, name: str, tensor: torch.Tensor) -> None:
        """Queues a tensor held in memory."""
        t = tensor.detach().contiguous().cpu()
        self._add(_Entry(name, _DTYPES[t.dtype], tuple(t.shape), t.numel() * t.element_size(), tensor=t))

    def add_copy(self, name: str, info: dict, path: Path, data_start: int) -> None:
        """Queues a tensor to copy unchanged from a source file, given its header entry."""
        begin, end = info["data_offsets"]
        self._add(_Entry(name, info["dtype"], tuple(info["shape"]), end - begin, source=(path, data_start + begin)))

    def _add(self, entry: _Entry) -> None:
        if self.pending and self.pending_bytes + entry.nbytes > self.max_shard_bytes:
            self.flush()
        self.pending.append(entry)
        self.pending_bytes += entry.nbytes

    def flush(self) -> None:
        """Writes the queued tensors as one shard file."""
        if not self.pending:
            return
        path = self.out_dir / f"shard-{len(self.shards):05d}.safetensors.tmp"
        _write_shard(path, self.pending)
        self.shards.append((path, [e.name for e in self.pending]))
        self.pending, self.pending_bytes = [], 0

    def finish(self) -> dict[str, str]:
        """Flushes, names the shards model-0000i-of-0000n.safetensors; returns the weight map."""
        self.flush()
        total, weight_map = len(self.shards), {}
        for i, (tmp, names) in enumerate(self.shards):
            final = "model.safetensors" if total == 1 else f"model-{i + 1:05d}-of-{total:05d}.safetensors"
            tmp.rename(self.out_dir / final)
            weight_map.update({name: final for name in names})
        return weight_map


def _write_shard(path: Path, entries: list[_Entry]) -> None:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for e in entries:
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        for e in entries:
            _write_entry(out, e)


def _write_entry(out, entry: _Entry) -> None:
    if entry.tensor is not None:
        if entry.nbytes:
            out.write(memoryview(entry.tensor.reshape(-1).view(torch.uint8).numpy()))
        return
    path, start = entry.source
    with open(path, "rb") as src:
        src.seek(start)
        left = entry.nbytes
        while left:
            chunk = src.read(min(left, _COPY_CHUNK_BYTES))
            if not chunk:
                raise OSError(f"{path} ended early while copying {entry.name}: the source checkpoint is truncated")
            out.write(chunk)
            left -= len(chunk)
