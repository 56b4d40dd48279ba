"""The layer spec: the one data type every stage speaks (see ARCHITECTURE.md), one layer or a batch.

Owns validation (against `profiler.spec_limits`, the table the runner is built from; each bad field
gets a message naming it and its value), the derived quantities (output size, MACs, parameters,
non-zeros, bytes moved), the identity key, `LayerBatch` (the column form) and JSONL I/O. Both forms
and their one wording of every rule stay in this one file (past 400 lines) so they cannot drift apart.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from jcw.profiler.spec_limits import INT_LIMITS

OPS = ("conv", "dwconv")
IMPLS = ("dense", "sparse")
SPEC_FIELDS = ("op", "cin", "cout", "k", "stride", "pad", "h", "w", "density")
INT_FIELDS = ("cin", "cout", "k", "stride", "pad", "h", "w")
REQUIRED_FIELDS = ("op", "cin", "cout", "k", "h", "w")
BYTES_PER_FLOAT = 4
#: Largest integer of a program spec's dimensions (profiler.programs): what a 32-bit index holds.
MAX_INT = 2**31 - 1
#: The identity key rounds density to this many decimals: closer densities are the same layer.
KEY_DENSITY_DECIMALS = 6


class LayerSpecError(ValueError):
    """A layer spec field is missing or out of range; the message names field and value."""


def _shown(value: Any) -> str:
    """repr of a bad value, cut short: a message stays one readable sentence."""
    if isinstance(value, np.generic):
        value = value.item()
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---- the rules, worded once for a single spec and for a batch -------------------------------
def _not_integer(name: str, value: Any) -> LayerSpecError:
    return LayerSpecError(f"layer spec field '{name}' must be an integer, got {_shown(value)}")


def _out_of_range(name: str, value: Any) -> LayerSpecError:
    low, high = INT_LIMITS[name]
    bound = f">= {low}" if value < low else f"<= {high}"
    return LayerSpecError(f"layer spec field '{name}' must be {bound}, got {_shown(value)}")


def _bad_op(value: Any) -> LayerSpecError:
    return LayerSpecError(f"layer spec field 'op' must be one of {', '.join(OPS)}, got {_shown(value)}")


def _bad_density(value: Any) -> LayerSpecError:
    return LayerSpecError(f"layer spec field 'density' must be a number in (0, 1], got {_shown(value)}")


def _dwconv_channels(cin: int, cout: int) -> LayerSpecError:
    return LayerSpecError(f"layer spec field 'cout' must equal 'cin' for a dwconv, got cin={cin}, cout={cout}")


def _kernel_too_big(k: int, h: int, w: int, pad: int) -> LayerSpecError:
    return LayerSpecError(f"layer spec field 'k' must not exceed the padded input ({h + 2 * pad}x{w + 2 * pad}), "
                          f"got {k}")


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or (isinstance(value, (float, np.floating)) and not float(value).is_integer()):
        raise _not_integer(name, value)
    low, high = INT_LIMITS[name]
    if not low <= value <= high:
        raise _out_of_range(name, value)
    return int(value)


def _check_density(value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0.0 < value <= 1.0:
        raise _bad_density(value)
    return float(value)


def key_text(op: str, cin: int, cout: int, k: int, stride: int, pad: int, h: int, w: int, density: float) -> str:
    """The identity key of one layer as text (density rounded to KEY_DENSITY_DECIMALS)."""
    return f"{op}:{cin}:{cout}:{k}:{stride}:{pad}:{h}:{w}:{density:.{KEY_DENSITY_DECIMALS}f}"


@dataclass(frozen=True, kw_only=True)
class LayerSpec:
    """One convolution layer as the runner measures it; fully connected = conv with k=h=w=1.

    Keyword-only: `LayerSpec(op="conv", cin=16, cout=32, k=3, h=28, w=28)`, never by field order.
    """

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
        if not isinstance(self.op, str) or self.op not in OPS:
            raise _bad_op(self.op)
        for name in ("cin", "cout", "k", "h", "w", "stride"):
            object.__setattr__(self, name, _check_int(name, getattr(self, name)))
        pad = self.k // 2 if self.pad is None else _check_int("pad", self.pad)
        object.__setattr__(self, "pad", pad)
        object.__setattr__(self, "density", _check_density(self.density))
        if self.op == "dwconv" and self.cin != self.cout:
            raise _dwconv_channels(self.cin, self.cout)
        if self.k > self.h + 2 * pad or self.k > self.w + 2 * pad:
            raise _kernel_too_big(self.k, self.h, self.w, pad)
        object.__setattr__(self, "_groups", self.cin if self.op == "dwconv" else 1)

    # ---- construction and serialisation -------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerSpec:
        """Build from a JSON object; extra keys (id, impl, threads, ...) are ignored, and a null
        stride, pad or density means its default (as the runner reads it)."""
        if not isinstance(data, Mapping):
            raise LayerSpecError(f"a layer spec must be a JSON object, got {type(data).__name__}")
        missing = [f for f in REQUIRED_FIELDS if f not in data]
        if missing:
            raise LayerSpecError(f"layer spec field '{missing[0]}' is missing")
        stride, density = data.get("stride"), data.get("density")
        return cls(op=data["op"], cin=data["cin"], cout=data["cout"], k=data["k"], h=data["h"], w=data["w"],
                   stride=1 if stride is None else stride, pad=data.get("pad"),
                   density=1.0 if density is None else density)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SPEC_FIELDS}

    def key(self) -> str:
        """Canonical text identity of the spec (density rounded to 1e-6), used for de-duplication."""
        return key_text(*(getattr(self, name) for name in SPEC_FIELDS))

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



# ---- LayerBatch: the column form the predictor and the search exchange ------------------------
class LayerBatch:
    """Many layer specs as equal-length numpy arrays, one per field: op (object array of str), the
    integer fields (int64) and density (float64). Validated once when built; treat it as read-only
    (derived quantities are computed once and cached: `replace` makes a changed batch).

    Reads like the columns dict it replaces (`batch["cin"]`, `batch.items()`, `{**batch}`), while
    `len(batch)` is the number of layers. Build with `from_specs`, `from_rows` (store rows, JSON
    objects) or `from_arrays`; go back with `to_specs`.
    """

    def __init__(self, columns: dict[str, np.ndarray]) -> None:
        # Private: the classmethods below validate (or, for specs, are valid by construction).
        self._columns = columns

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_specs(cls, specs: Iterable[LayerSpec]) -> LayerBatch:
        specs = list(specs)
        if not all(isinstance(spec, LayerSpec) for spec in specs):
            raise LayerSpecError("layers must be LayerSpec objects, a LayerBatch or a mapping of columns")
        columns = {"op": np.array([s.op for s in specs], dtype=object)}
        for name in INT_FIELDS:
            columns[name] = np.array([getattr(s, name) for s in specs], dtype=np.int64)
        columns["density"] = np.array([s.density for s in specs], dtype=np.float64)
        return cls(columns)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> LayerBatch:
        """Store rows or JSON objects holding the spec fields; other keys are ignored and a null
        stride, pad or density means its default, as in `LayerSpec.from_dict`."""
        rows = list(rows)
        for name in REQUIRED_FIELDS:
            absent = next((i for i, row in enumerate(rows) if name not in row), None)
            if absent is not None:
                raise LayerSpecError(f"layer spec field '{name}' is missing (layer {absent})")
        columns = {name: [row.get(name) for row in rows] for name in SPEC_FIELDS}
        for name, default in (("stride", 1), ("density", 1.0)):
            columns[name] = [default if value is None else value for value in columns[name]]
        for name in SPEC_FIELDS[1:]:
            # numpy would quietly read True as 1 and "3" beside 2.5 as text: anything but plain JSON
            # numbers (a None pad: its default; a huge int) goes through the one-value checks instead.
            values, numeric = columns[name], np.float64 if name == "density" else np.int64
            try:
                plain = set(map(type, values)) <= ({int, float} if name == "density" else {int})
                columns[name] = np.array(values, dtype=numeric if plain else object)
            except OverflowError:
                columns[name] = np.array(values, dtype=object)
        return cls.from_arrays(columns)

    @classmethod
    def from_arrays(cls, columns: Mapping[str, Any] | None = None, /, **arrays: Any) -> LayerBatch:
        """From a mapping and/or keyword arrays of the spec fields; stride defaults to 1, pad to k // 2
        and density to 1. Every field is checked for every layer against the one table of limits."""
        given = {**(columns if columns is not None else {}), **arrays}
        missing = [name for name in REQUIRED_FIELDS if name not in given]
        if missing:
            raise LayerSpecError(f"layer spec field '{missing[0]}' is missing")
        op = np.asarray(given["op"], dtype=object)
        if op.ndim != 1:
            raise LayerSpecError(f"layer spec field 'op' must be a 1-D array, got shape {op.shape}")
        n = len(op)
        out = {"op": op}
        bad = ~((op == "conv") | (op == "dwconv"))
        if bad.any():
            raise _at(_bad_op(op[bad][0]), bad)
        for name in INT_FIELDS:
            values = given.get(name)
            if name == "pad" and values is not None and np.asarray(values).shape == (n,) \
                    and np.asarray(values).dtype == object:
                unset = np.array([value is None for value in values], dtype=bool)
                values = np.where(unset, out["k"] // 2, values) if unset.any() else values
            if values is not None:
                out[name] = _int_column(name, values, n)
        out.setdefault("stride", np.ones(n, dtype=np.int64))
        out.setdefault("pad", out["k"] // 2)
        out["density"] = _density_column(given.get("density", np.ones(n)), n)
        batch = cls({name: out[name] for name in SPEC_FIELDS})
        wrong = (op == "dwconv") & (batch.cin != batch.cout)
        if wrong.any():
            first = int(np.argmax(wrong))
            raise _at(_dwconv_channels(batch.cin[first], batch.cout[first]), wrong)
        padded = 2 * batch.pad
        wrong = (batch.k > batch.h + padded) | (batch.k > batch.w + padded)
        if wrong.any():
            first = int(np.argmax(wrong))
            raise _at(_kernel_too_big(batch.k[first], batch.h[first], batch.w[first], batch.pad[first]), wrong)
        return batch

    @classmethod
    def coerce(cls, layers: LayerBatch | Iterable[LayerSpec] | Mapping[str, Any]) -> LayerBatch:
        """A LayerBatch as it is, a mapping of columns through `from_arrays`, specs through `from_specs`."""
        if isinstance(layers, LayerBatch):
            return layers
        if isinstance(layers, Mapping):
            return cls.from_arrays(layers)
        return cls.from_specs(layers)

    def to_specs(self) -> list[LayerSpec]:
        return [LayerSpec(op=str(self.op[i]), **{name: int(self[name][i]) for name in INT_FIELDS},
                          density=float(self.density[i])) for i in range(len(self))]

    def to_dict(self) -> dict[str, np.ndarray]:
        return dict(self._columns)

    def take(self, index: Any) -> LayerBatch:
        """The layers at a boolean mask or integer indices (already valid: no checks again)."""
        return LayerBatch({name: values[index] for name, values in self._columns.items()})

    def replace(self, **columns: Any) -> LayerBatch:
        """A new batch with some fields replaced (e.g. density=1), checked again."""
        changes = {**self._columns, **columns}
        if "k" in columns and "pad" not in columns:
            del changes["pad"]
        return LayerBatch.from_arrays(changes)

    # ---- the columns, dict-like ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._columns["op"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self._columns[name]

    def __getattr__(self, name: str) -> np.ndarray:
        if name in SPEC_FIELDS:
            return self._columns[name]
        raise AttributeError(name)

    def __contains__(self, name: object) -> bool:
        return name in self._columns

    def keys(self) -> tuple[str, ...]:
        return SPEC_FIELDS

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        return iter(self._columns.items())

    def __repr__(self) -> str:
        return f"LayerBatch({len(self)} layers)"

    # ---- identity ------------------------------------------------------------------------------
    def key_columns(self) -> list[np.ndarray]:
        """The identity key as integer arrays (op code, integer fields, density in 1e-6 steps)."""
        density = np.round(self.density * 10.0**KEY_DENSITY_DECIMALS).astype(np.int64)
        return [(self.op == "dwconv").astype(np.int64), *(self[name] for name in INT_FIELDS), density]

    def layer_keys(self) -> list[str]:
        """`LayerSpec.key()` of every layer."""
        return [key_text(*row) for row in zip(*(self[name].tolist() for name in SPEC_FIELDS))]

    def distinct(self) -> tuple[LayerBatch, np.ndarray]:
        """The distinct layers (by identity key, in key order) and, per layer, its index among them."""
        n = len(self)
        if n < 2:
            return self, np.arange(n)
        keys = self.key_columns()
        # Sorting the key columns and marking where a row differs from the one before is ~1.5x faster
        # than np.unique over packed rows, and a search predicts distinct layers on every batch.
        order = np.lexsort(keys[::-1])
        in_order = np.column_stack([key[order] for key in keys])
        starts = np.empty(n, dtype=bool)
        starts[0] = True
        starts[1:] = np.any(in_order[1:] != in_order[:-1], axis=1)
        inverse = np.empty(n, dtype=np.int64)
        inverse[order] = np.cumsum(starts) - 1
        return self.take(order[starts]), inverse

    # ---- derived quantities, vectorised (LayerSpec's formulas, float64 against overflow) -------
    @cached_property
    def physical(self) -> dict[str, np.ndarray]:
        cin, cout, k = (self[name].astype(np.float64) for name in ("cin", "cout", "k"))
        dw = self.op == "dwconv"
        out_h = (self.h + 2 * self.pad - self.k) // self.stride + 1
        out_w = (self.w + 2 * self.pad - self.k) // self.stride + 1
        out_hw = (out_h * out_w).astype(np.float64)
        weights = cout * np.where(dw, 1.0, cin) * k * k
        nnz = np.maximum(1.0, np.round(self.density * weights))
        macs = out_hw * weights
        # The sparse path feeds SpMM directly only for an unpadded stride-1 1x1 convolution; every
        # other layer first gathers an im2col buffer of cin*k*k rows (the runner times it too).
        im2col_bytes = np.where((self.k == 1) & (self.stride == 1) & (self.pad == 0), 0.0,
                                cin * k * k * out_hw * BYTES_PER_FLOAT)
        return {
            "out_h": out_h, "out_w": out_w, "out_hw": out_hw, "weights": weights, "nnz": nnz, "macs": macs,
            "effective_macs": macs * self.density,
            "input_bytes": cin * self.h * self.w * BYTES_PER_FLOAT,
            "output_bytes": cout * out_hw * BYTES_PER_FLOAT,
            "weight_bytes": weights * BYTES_PER_FLOAT,
            "im2col_bytes": im2col_bytes,
            # At stride 1 a row is copied with memcpy; at stride 2 or more element by element.
            "im2col_strided_bytes": np.where(self.stride > 1, im2col_bytes, 0.0),
        }


def _at(error: LayerSpecError, bad: np.ndarray) -> LayerSpecError:
    """The error of the first bad layer, naming which one."""
    return LayerSpecError(f"{error} (layer {int(np.argmax(bad))})")


def _int_column(name: str, values: Any, n: int) -> np.ndarray:
    values = np.asarray(values)
    if values.shape != (n,):
        raise LayerSpecError(f"layer spec field '{name}' has shape {values.shape}, expected ({n},)")
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            raise _at(_not_integer(name, values[bad][0]), bad)
    elif values.dtype.kind not in "iu":  # bool, str, object (None, huge Python ints...): one at a time
        for i, value in enumerate(values.tolist()):
            try:
                _check_int(name, value)
            except LayerSpecError as exc:
                raise LayerSpecError(f"{exc} (layer {i})") from None
        values = np.array([int(v) for v in values.tolist()], dtype=np.int64)
    low, high = INT_LIMITS[name]
    bad = (values < low) | (values > high)
    if bad.any():
        raise _at(_out_of_range(name, values[bad][0]), bad)
    return values.astype(np.int64, copy=False)


def _density_column(values: Any, n: int) -> np.ndarray:
    values = np.asarray(values)
    if values.shape != (n,):
        raise LayerSpecError(f"layer spec field 'density' has shape {values.shape}, expected ({n},)")
    if values.dtype.kind not in "iuf":
        for i, value in enumerate(values.tolist()):
            try:
                _check_density(value)
            except LayerSpecError as exc:
                raise LayerSpecError(f"{exc} (layer {i})") from None
    values = values.astype(np.float64)
    bad = ~((values > 0.0) & (values <= 1.0))
    if bad.any():
        raise _at(_bad_density(values[bad][0]), bad)
    return values


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
