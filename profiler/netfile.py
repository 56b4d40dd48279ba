"""The jcw network file (`.jcwnet`, android_harness/native/NETFILE.md): writing and reading it.

Owns the byte layout, the payload checksum and every refusal the contract lists (one sentence naming
the file); the operator graph itself is checked by profiler.netgraph. numpy only, never torch.
"""
from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jcw.profiler.netgraph import NetFileError, check_graph, check_sparse_weights

__all__ = ["SUFFIX", "NetFile", "NetFileError", "read_net", "write_net"]

MAGIC = b"JCWNET\0\0"
VERSION = 1
FORMAT = "jcw-net"
#: Tensors start at multiples of this from the payload start, so the engine can use them in place.
ALIGN = 64
MAX_HEADER_BYTES = 16 * 1024 * 1024
PREAMBLE = struct.Struct("<8sII")  # magic, version, header length
CHECK_INPUT, CHECK_OUTPUT = "check.input", "check.output"
SUFFIX = ".jcwnet"
_HEADER_FIELDS = ("format", "version", "name", "input", "output", "payload_bytes", "payload_crc32",
                  "tensors", "nodes", "check")


@dataclass(frozen=True)
class NetFile:
    """A network file as read: its header, its nodes and its tensors (float32, read-only)."""

    path: str
    header: dict[str, Any]
    nodes: list[dict[str, Any]]
    tensors: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]

    @property
    def name(self) -> str:
        return str(self.header["name"])

    @property
    def input_name(self) -> str:
        return self.header["input"]["name"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.header["input"]["shape"])

    @property
    def output(self) -> str:
        return self.header["output"]

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.shapes[self.output]

    @property
    def tolerance(self) -> float:
        return float(self.header["check"]["tolerance"])

    @property
    def check_input(self) -> np.ndarray:
        return self.tensors[self.header["check"]["input"]]

    @property
    def check_output(self) -> np.ndarray:
        return self.tensors[self.header["check"]["output"]]

    @property
    def sparse_layers(self) -> list[str]:
        """Names of the convolutions the engine is asked to run with the sparse kernel."""
        return [node["name"] for node in self.nodes if node["op"] == "conv2d" and node.get("sparse")]


def _producer() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return f"jcw {version('jcw')}"
    except PackageNotFoundError:  # a checkout on sys.path, not installed: still a valid file
        return "jcw"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, np.bool_)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _as_float32(path: str, name: str, value: Any) -> np.ndarray:
    array = np.ascontiguousarray(np.asarray(value, dtype="<f4"))
    if array.ndim == 0 or 0 in array.shape:
        raise NetFileError(f"cannot write {path}: tensor {name!r} must have at least one element on every axis, "
                           f"got shape {list(array.shape)}")
    return array


def write_net(path: str | os.PathLike, *, name: str, input_name: str, input_shape: Sequence[int], output: str,
              nodes: Sequence[Mapping[str, Any]], tensors: Mapping[str, Any], check_input: Any, check_output: Any,
              tolerance: float = 1e-3, validate: bool = True) -> None:
    """Write a network file atomically (a crash never leaves half a file under `path`).

    `tensors` maps the names the nodes use to arrays (stored as float32); the check pair is added as
    "check.input" / "check.output". validate=False skips the graph check (only for tests of refusals).
    """
    path = os.fspath(path)
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not (
            math.isfinite(tolerance) and tolerance > 0):
        raise NetFileError(f"cannot write {path}: tolerance must be a finite number > 0, got {tolerance!r}")
    arrays = {key: _as_float32(path, key, value) for key, value in tensors.items()}
    if CHECK_INPUT in arrays or CHECK_OUTPUT in arrays:
        raise NetFileError(f"cannot write {path}: tensor names {CHECK_INPUT!r} and {CHECK_OUTPUT!r} are reserved")
    arrays[CHECK_INPUT] = _as_float32(path, CHECK_INPUT, check_input)
    arrays[CHECK_OUTPUT] = _as_float32(path, CHECK_OUTPUT, check_output)
    table, chunks, offset = {}, [], 0
    for key, array in arrays.items():
        if validate and not np.isfinite(array).all():
            raise NetFileError(f"cannot write {path}: tensor {key!r} has a value that is not finite")
        padding = -offset % ALIGN
        chunks.append(b"\0" * padding)
        offset += padding
        table[key] = {"offset": offset, "shape": [int(d) for d in array.shape]}
        chunks.append(array.tobytes())
        offset += array.nbytes
    payload = b"".join(chunks)
    header = {"format": FORMAT, "version": VERSION, "name": str(name), "producer": _producer(),
              "input": {"name": input_name, "shape": [int(d) for d in input_shape]}, "output": output,
              "payload_bytes": len(payload), "payload_crc32": zlib.crc32(payload), "tensors": table,
              "nodes": [dict(node) for node in nodes],
              "check": {"input": CHECK_INPUT, "output": CHECK_OUTPUT, "tolerance": float(tolerance)}}
    try:
        text = json.dumps(header, default=_json_default, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise NetFileError(f"cannot write {path}: its header cannot be written as JSON ({exc})") from None
    if validate:
        _check_header(path, header, arrays)
    start = PREAMBLE.size + len(text)
    blob = PREAMBLE.pack(MAGIC, VERSION, len(text)) + text + b"\0" * (-start % ALIGN) + payload
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        with open(temporary, "wb") as handle:
            handle.write(blob)
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise NetFileError(f"cannot write {path}: {exc.strerror or exc}") from None


def _check_header(path: str, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> dict[str, tuple]:
    """Graph, check pair and sparse weights; the value shapes on success."""
    shapes = check_graph(path, header, {key: tuple(a.shape) for key, a in arrays.items()})
    check_sparse_weights(path, header["nodes"], arrays)
    check = header["check"]
    if not isinstance(check, dict) or not all(isinstance(check.get(k), str) for k in ("input", "output")):
        raise NetFileError(f"{path} has a 'check' field that does not name an input and an output tensor")
    tolerance = check.get("tolerance")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not (
            math.isfinite(tolerance) and tolerance > 0):
        raise NetFileError(f"{path} has a check tolerance that is not a number > 0: {tolerance!r}"[:200])
    for role, wanted in (("input", tuple(header["input"]["shape"])), ("output", shapes[header["output"]])):
        key = check[role]
        if key not in arrays:
            raise NetFileError(f"{path} names a check {role} tensor {key!r} that is not in its tensor table"[:200])
        if tuple(arrays[key].shape) != wanted:
            raise NetFileError(f"{path} has a check {role} of shape {list(arrays[key].shape)}, "
                               f"but the network's {role} has shape {list(wanted)}")
        if not np.isfinite(arrays[key]).all():
            raise NetFileError(f"{path} has a check {role} with a value that is not finite")
    return shapes


def _read_exactly(handle, size: int) -> bytes:
    data = handle.read(size)
    return data if data is not None else b""


def _tensor_table(path: str, header: Mapping[str, Any], payload: bytes) -> dict[str, np.ndarray]:
    table = header["tensors"]
    if not isinstance(table, dict):
        raise NetFileError(f"{path} has a 'tensors' field that is not a JSON object")
    arrays = {}
    for key, entry in table.items():
        offset = entry.get("offset") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if (isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 or offset % ALIGN
                or not isinstance(shape, list) or not shape
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)):
            raise NetFileError(f"{path} has a tensor {key!r} whose offset is not a multiple of {ALIGN} "
                               f"or whose shape is not a list of integers >= 1"[:240])
        nbytes = 4 * math.prod(shape)
        if offset + nbytes > len(payload):
            raise NetFileError(f"{path} has a tensor {key!r} of shape {shape} at offset {offset} that does "
                               f"not fit in its {len(payload)}-byte payload"[:240])
        array = np.frombuffer(payload, dtype="<f4", count=nbytes // 4, offset=offset).reshape(shape)
        if not np.isfinite(array).all():
            raise NetFileError(f"{path} has a tensor {key!r} with a value that is not finite")
        arrays[key] = array
    return arrays


def read_net(path: str | os.PathLike) -> NetFile:
    """Read and check a network file; NetFileError (one sentence naming the file) on any refusal."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            preamble = _read_exactly(handle, PREAMBLE.size)
            if len(preamble) < PREAMBLE.size or preamble[:8] != MAGIC:
                raise NetFileError(f"{path} is not a jcw network file")
            _, version, header_bytes = PREAMBLE.unpack(preamble)
            if version != VERSION:
                raise NetFileError(f"{path} is a jcw network file of version {version}; "
                                   f"this engine reads version {VERSION}")
            if not 1 <= header_bytes <= MAX_HEADER_BYTES:
                raise NetFileError(f"{path} declares a header of {header_bytes} bytes, outside 1 byte to 16 MiB "
                                   f"(damaged)")
            if PREAMBLE.size + header_bytes > size:
                raise NetFileError(f"{path} is truncated: its header ends at byte {PREAMBLE.size + header_bytes} "
                                   f"but the file has {size} bytes")
            header = _parse_header(path, _read_exactly(handle, header_bytes))
            payload_start = PREAMBLE.size + header_bytes + (-(PREAMBLE.size + header_bytes) % ALIGN)
            expected = payload_start + header["payload_bytes"]
            if size != expected:
                state = "truncated" if size < expected else "extended"
                raise NetFileError(f"{path} is {state}: its header says {expected} bytes but the file has {size}")
            padding = _read_exactly(handle, payload_start - PREAMBLE.size - header_bytes)
            payload = _read_exactly(handle, header["payload_bytes"])
    except OSError as exc:
        raise NetFileError(f"cannot read network file {path}: {exc.strerror or exc}") from None
    if any(padding) or len(payload) != header["payload_bytes"]:
        raise NetFileError(f"{path} is damaged: the bytes between its header and payload are not zero")
    if zlib.crc32(payload) != header["payload_crc32"]:
        raise NetFileError(f"{path} is damaged: its payload does not match its CRC-32")
    arrays = _tensor_table(path, header, payload)
    shapes = _check_header(path, header, arrays)
    return NetFile(path=path, header=header, nodes=header["nodes"], tensors=arrays, shapes=shapes)


def _parse_header(path: str, text: bytes) -> dict[str, Any]:
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise NetFileError(f"{path} has a header that is not JSON (damaged)") from None
    if not isinstance(header, dict):
        raise NetFileError(f"{path} has a header that is not a JSON object (damaged)")
    missing = [field for field in _HEADER_FIELDS if field not in header]
    if missing:
        raise NetFileError(f"{path} has a header without the field {missing[0]!r}")
    if header["format"] != FORMAT or header["version"] != VERSION:
        raise NetFileError(f"{path} has a header of format {header['format']!r} version {header['version']!r}; "
                           f"this engine reads {FORMAT!r} version {VERSION}"[:240])
    for field, bits in (("payload_bytes", 64), ("payload_crc32", 32)):
        value = header[field]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2 ** bits:
            raise NetFileError(f"{path} has a header field {field!r} that is not a non-negative integer")
    return header
