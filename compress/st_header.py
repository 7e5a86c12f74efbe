"""The project's one reader of safetensors headers (no torch).

A safetensors file starts with an 8-byte little-endian header length, then that many bytes
of JSON: an object mapping each tensor name (and "__metadata__") to its dtype, shape and
data_offsets, which count from the end of the header.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

# A real header is kilobytes to a few MB; a length beyond this means the first 8 bytes are garbage.
MAX_HEADER_BYTES = 100 * 2**20


class HeaderError(ValueError):
    """A file whose safetensors header cannot be read; the message names the file and the problem."""


def read_header(path: Path | str) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the byte offset where tensor data starts.

    Checks only the header itself (length prefix within the file, JSON object); the
    entries are returned as stored.

    Raises:
        HeaderError: the file is shorter than its length prefix says, or the header is not a JSON object.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise HeaderError(f"{path} is truncated ({size} bytes, shorter than a safetensors header)")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise HeaderError(f"{path} has a corrupt safetensors header (declared length {length} bytes, "
                              f"file {size} bytes)")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HeaderError(f"{path} has a garbage safetensors header (not JSON: {err})") from err
    if not isinstance(header, dict):
        raise HeaderError(f"{path} has a safetensors header that is not a JSON object")
    return header, 8 + length
