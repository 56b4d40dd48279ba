"""The layer spec: the one data type every stage speaks (see ARCHITECTURE.md).

Owns validation (each bad field gets a message naming it and its value), the derived
quantities (output size, MACs, parameters, non-zeros, bytes moved) and JSONL I/O.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

OPS = ("conv", "dwconv")
IMPLS = ("dense", "sparse")
SPEC_FIELDS = ("op", "cin", "cout", "k", "stride", "pad", "h", "w", "density")
BYTES_PER_FLOAT = 4
#: Largest integer field: the runner and the vectorized columns hold them as 32/64-bit integers.
MAX_INT = 2**31 - 1


class LayerSpecError(ValueError):
    """A layer spec field is missing or out of range; the message names field and value."""


def _shown(value: Any) -> str:
    """repr of a bad value, cut short: a message stays one readable sentence."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (isinstance(value, float) and not value.is_integer()):
        raise LayerSpecError(f"layer spec field '{name}' must be an integer, got {_shown(value)}")
    if value < minimum:
        raise LayerSpecError(f"layer spec field '{name}' must be >= {minimum}, got {_shown(value)}")
    if value > MAX_INT:
        raise LayerSpecError(f"layer spec field '{name}' must be <= {MAX_INT}, got {_shown(value)}")
    return int(value)


@dataclass(frozen=True)
class LayerSpec:
    """One convolution layer as the runner measures it; fully connected = conv with k=h=w=1."""

    op: str
    cin: int
    cout: int
    k: int
    h: int
    w: int
    stride: int = 1
    pad: int | None = None
    density: float = 1.0
    _groups: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise LayerSpecError(f"layer spec field 'op' must be one of {', '.join(OPS)}, got {_shown(self.op)}")
        for name, minimum in (("cin", 1), ("cout", 1), ("k", 1), ("h", 1), ("w", 1), ("stride", 1)):
            object.__setattr__(self, name, _check_int(name, getattr(self, name), minimum))
        pad = self.k // 2 if self.pad is None else _check_int("pad", self.pad, 0)
        object.__setattr__(self, "pad", pad)
        density = self.density
        if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0.0 < density <= 1.0:
            raise LayerSpecError(f"layer spec field 'density' must be a number in (0, 1], got {_shown(density)}")
        object.__setattr__(self, "density", float(density))
        if self.op == "dwconv" and self.cin != self.cout:
            raise LayerSpecError(
                f"layer spec field 'cout' must equal 'cin' for a dwconv, got cin={self.cin}, cout={self.cout}")
        if self.k > self.h + 2 * pad or self.k > self.w + 2 * pad:
            raise LayerSpecError(
                f"layer spec field 'k' must not exceed the padded input ({self.h + 2 * pad}x{self.w + 2 * pad}), "
                f"got {self.k}")
        object.__setattr__(self, "_groups", self.cin if self.op == "dwconv" else 1)

    # ---- construction and serialisation -------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerSpec:
        """Build from a JSON object; extra keys (id, impl, threads, ...) are ignored."""
        if not isinstance(data, dict):
            raise LayerSpecError(f"a layer spec must be a JSON object, got {type(data).__name__}")
        missing = [f for f in ("op", "cin", "cout", "k", "h", "w") if f not in data]
        if missing:
            raise LayerSpecError(f"layer spec field '{missing[0]}' is missing")
        return cls(op=data["op"], cin=data["cin"], cout=data["cout"], k=data["k"], h=data["h"], w=data["w"],
                   stride=data.get("stride", 1), pad=data.get("pad"), density=data.get("density", 1.0))

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SPEC_FIELDS}

    def key(self) -> str:
        """Canonical text identity of the spec (density rounded to 1e-6), used for de-duplication."""
        return (f"{self.op}:{self.cin}:{self.cout}:{self.k}:{self.stride}:{self.pad}:"
                f"{self.h}:{self.w}:{self.density:.6f}")

    def replace(self, **changes: Any) -> LayerSpec:
        data = self.to_dict()
        data.update(changes)
        if "k" in changes and "pad" not in changes:
            data["pad"] = None
        return LayerSpec.from_dict(data)

    # ---- derived quantities -------------------------------------------------------------
    @property
    def groups(self) -> int:
        return self._groups

    @property
    def out_h(self) -> int:
        return (self.h + 2 * self.pad - self.k) // self.stride + 1

    @property
    def out_w(self) -> int:
        return (self.w + 2 * self.pad - self.k) // self.stride + 1

    @property
    def weights(self) -> int:
        """Weight count (bias excluded)."""
        return self.cout * (self.cin // self.groups) * self.k * self.k

    @property
    def params(self) -> int:
        return self.weights + self.cout

    @property
    def nnz(self) -> int:
        """Non-zero weights: exactly round(density * weights), at least one."""
        return max(1, int(round(self.density * self.weights)))

    @property
    def macs(self) -> int:
        """Dense multiply-accumulates."""
        return self.out_h * self.out_w * self.weights

    @property
    def effective_macs(self) -> float:
        return self.macs * self.density

    @property
    def input_bytes(self) -> int:
        return self.cin * self.h * self.w * BYTES_PER_FLOAT

    @property
    def output_bytes(self) -> int:
        return self.cout * self.out_h * self.out_w * BYTES_PER_FLOAT

    @property
    def weight_bytes(self) -> int:
        return self.weights * BYTES_PER_FLOAT

    @property
    def bytes_moved(self) -> int:
        return self.input_bytes + self.output_bytes + self.weight_bytes


# ---- columns: the vectorized form the predictor and the search exchange -------------------
def to_columns(specs: Iterable[LayerSpec]) -> dict[str, np.ndarray]:
    """Specs as a dict of equal-length arrays (op as a str array), for vectorized prediction."""
    specs = list(specs)
    cols: dict[str, np.ndarray] = {"op": np.array([s.op for s in specs], dtype=object)}
    for name in SPEC_FIELDS[1:-1]:
        cols[name] = np.array([getattr(s, name) for s in specs], dtype=np.int64)
    cols["density"] = np.array([s.density for s in specs], dtype=np.float64)
    return cols


# ---- JSON Lines -------------------------------------------------------------------------
def iter_jsonl(path: str | Path, what: str = "layer") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; a bad line raises LayerSpecError naming the
    file as a `what` file (layer, program spec, ...)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LayerSpecError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise LayerSpecError(f"{what} file {path} is not UTF-8 text") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LayerSpecError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        except (RecursionError, ValueError):  # nesting or a number beyond what Python parses
            raise LayerSpecError(f"{path}:{number}: not a {what} spec (JSON nested too deeply or a number "
                                 f"too long)") from None
        yield number, obj


def read_jsonl(path: str | Path) -> list[tuple[dict[str, Any], LayerSpec]]:
    """Read a layers file: (original object, validated spec) per line; errors name file and line."""
    out = []
    for number, obj in iter_jsonl(path):
        try:
            out.append((obj, LayerSpec.from_dict(obj)))
        except LayerSpecError as exc:
            raise LayerSpecError(f"{path}:{number}: {exc}") from None
    if not out:
        raise LayerSpecError(f"layer file {path} holds no layers")
    return out


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=False) + "\n")
