"""Layer spec: validation messages name the field and value; derived quantities; JSONL I/O."""
import json
import math

import numpy as np
import pytest

from jcw.profiler.layerspec import LayerBatch, LayerSpec, LayerSpecError, read_jsonl, write_jsonl

GOOD = {"op": "conv", "cin": 16, "cout": 32, "k": 3, "stride": 2, "h": 28, "w": 30, "density": 0.25}


def test_derived_quantities_match_hand_computation():
    spec = LayerSpec.from_dict(GOOD)
    assert spec.pad == 1
    assert (spec.out_h, spec.out_w) == (14, 15)  # (28 + 2 - 3) // 2 + 1, (30 + 2 - 3) // 2 + 1
    assert spec.weights == 32 * 16 * 9
    assert spec.params == 32 * 16 * 9 + 32
    assert spec.macs == 14 * 15 * 32 * 16 * 9
    assert spec.effective_macs == pytest.approx(spec.macs * 0.25)
    assert spec.nnz == round(0.25 * 32 * 16 * 9)
    assert spec.bytes_moved == 4 * (16 * 28 * 30 + 32 * 14 * 15 + 32 * 16 * 9)


def test_depthwise_and_fully_connected():
    dw = LayerSpec(op="dwconv", cin=8, cout=8, k=3, h=10, w=10)
    assert dw.groups == 8 and dw.weights == 8 * 9 and dw.macs == 10 * 10 * 8 * 9
    fc = LayerSpec(op="conv", cin=512, cout=1000, k=1, h=1, w=1)
    assert fc.pad == 0 and fc.macs == 512 * 1000 and (fc.out_h, fc.out_w) == (1, 1)
    tiny = LayerSpec(op="conv", cin=1, cout=1, k=1, h=1, w=1, density=0.01)
    assert tiny.nnz == 1  # never zero non-zeros


@pytest.mark.parametrize("field, value, words", [
    ("op", "deconv", "'op' must be one of conv, dwconv, got 'deconv'"),
    ("cin", 0, "'cin' must be >= 1, got 0"),
    ("cout", -4, "'cout' must be >= 1, got -4"),
    ("cout", 2.5, "'cout' must be an integer, got 2.5"),
    ("k", "3", "'k' must be an integer, got '3'"),
    ("stride", 0, "'stride' must be >= 1, got 0"),
    ("pad", -1, "'pad' must be >= 0, got -1"),
    ("h", True, "'h' must be an integer, got True"),
    ("w", None, "'w' must be an integer, got None"),
    ("density", 0.0, "'density' must be a number in (0, 1], got 0.0"),
    ("density", 1.5, "'density' must be a number in (0, 1], got 1.5"),
    ("density", float("nan"), "'density' must be a number in (0, 1], got nan"),
    ("density", "0.5", "'density' must be a number in (0, 1], got '0.5'"),
])
def test_each_bad_field_gets_its_message(field, value, words):
    with pytest.raises(LayerSpecError) as info:
        LayerSpec.from_dict({**GOOD, field: value})
    assert words in str(info.value)


def test_structural_errors_name_the_field():
    with pytest.raises(LayerSpecError, match="'cout' must equal 'cin' for a dwconv, got cin=8, cout=16"):
        LayerSpec.from_dict({**GOOD, "op": "dwconv", "cin": 8, "cout": 16})
    with pytest.raises(LayerSpecError, match="'k' must not exceed the padded input"):
        LayerSpec.from_dict({**GOOD, "k": 7, "pad": 0, "h": 5, "w": 5})
    with pytest.raises(LayerSpecError, match="'h' is missing"):
        LayerSpec.from_dict({k: v for k, v in GOOD.items() if k != "h"})
    with pytest.raises(LayerSpecError, match="must be a JSON object, got list"):
        LayerSpec.from_dict([1, 2])


def test_extra_keys_ignored_key_and_replace():
    a = LayerSpec.from_dict({**GOOD, "id": "x", "impl": "sparse", "threads": 4})
    b = LayerSpec.from_dict(GOOD)
    assert a == b and a.key() == b.key()
    assert a.key() != b.replace(density=0.5).key()
    bigger = b.replace(k=5)
    assert bigger.pad == 2  # the default pad follows the new kernel
    assert b.replace(k=5, pad=0).pad == 0


def test_batch_from_specs_is_columns():
    specs = [LayerSpec.from_dict(GOOD), LayerSpec(op="dwconv", cin=4, cout=4, k=3, h=8, w=8)]
    cols = LayerBatch.from_specs(specs)
    assert list(cols["op"]) == ["conv", "dwconv"]
    assert cols["cin"].dtype == np.int64 and list(cols["cin"]) == [16, 4]
    assert cols["density"].dtype == np.float64 and list(cols["density"]) == [0.25, 1.0]
    assert len(cols) == 2 and cols.to_specs() == specs
    assert set(cols.keys()) == {"op", "cin", "cout", "k", "stride", "pad", "h", "w", "density"}


def test_jsonl_round_trip_and_errors_name_file_and_line(tmp_path):
    path = tmp_path / "layers.jsonl"
    rows = [{**GOOD, "id": "a"}, {"op": "dwconv", "cin": 4, "cout": 4, "k": 3, "h": 8, "w": 8}]
    write_jsonl(path, rows)
    back = read_jsonl(path)
    assert [obj for obj, _ in back] == rows
    assert back[1][1].density == 1.0 and back[1][1].stride == 1

    path.write_text(json.dumps(GOOD) + "\n\n{not json\n")
    with pytest.raises(LayerSpecError, match=r"layers.jsonl:3: not valid JSON"):
        read_jsonl(path)
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "cin": -1}) + "\n")
    with pytest.raises(LayerSpecError, match=r"layers.jsonl:2: layer spec field 'cin' must be >= 1"):
        read_jsonl(path)
    path.write_text("\n")
    with pytest.raises(LayerSpecError, match="holds no layers"):
        read_jsonl(path)
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(LayerSpecError, match="is not UTF-8 text"):
        read_jsonl(path)
    with pytest.raises(LayerSpecError, match="cannot read layer file"):
        read_jsonl(tmp_path / "missing.jsonl")
    assert math.isclose(LayerSpec.from_dict(GOOD).density, 0.25)


def test_layer_spec_is_keyword_only():
    with pytest.raises(TypeError):
        LayerSpec("conv", 16, 32, 3, 28, 28)  # a field order is not part of the contract


def test_batch_from_rows_fills_defaults_like_from_dict_and_round_trips():
    rows = [{**GOOD, "id": "a", "latency_us": 3.0}, {"op": "dwconv", "cin": 4, "cout": 4, "k": 5, "h": 8, "w": 8},
            {"op": "conv", "cin": 2, "cout": 3, "k": 3, "h": 8, "w": 8, "stride": None, "pad": None,
             "density": None}]
    batch = LayerBatch.from_rows(rows)
    assert batch.to_specs() == [LayerSpec.from_dict(row) for row in rows]
    assert list(batch.pad) == [1, 2, 1] and list(batch.stride) == [2, 1, 1] and list(batch.density) == [0.25, 1, 1]
    assert batch.layer_keys() == [LayerSpec.from_dict(row).key() for row in rows]
    again = LayerBatch.from_arrays(batch.to_dict())
    assert again.to_specs() == batch.to_specs() and LayerBatch.coerce(batch) is batch


@pytest.mark.parametrize("field, value, words", [
    ("cin", 0, "'cin' must be >= 1, got 0 (layer 1)"),
    ("k", 2000, "'k' must be <= 1024, got 2000 (layer 1)"),
    ("h", 2.5, "'h' must be an integer, got 2.5 (layer 1)"),
    ("w", True, "'w' must be an integer, got True (layer 1)"),
    ("density", 0.0, "'density' must be a number in (0, 1], got 0.0 (layer 1)"),
    ("op", "deconv", "'op' must be one of conv, dwconv, got 'deconv' (layer 1)"),
])
def test_batch_refuses_what_the_spec_refuses_naming_field_value_and_layer(field, value, words):
    rows = [GOOD, {**GOOD, field: value}]
    with pytest.raises(LayerSpecError) as spec_error:
        LayerSpec.from_dict(rows[1])
    with pytest.raises(LayerSpecError) as batch_error:
        LayerBatch.from_rows(rows)
    assert str(batch_error.value) == f"{spec_error.value} (layer 1)"
    assert words in str(batch_error.value)


def test_batch_arrays_are_checked_for_shape_and_integrality():
    columns = LayerBatch.from_specs([LayerSpec.from_dict(GOOD)] * 3).to_dict()
    with pytest.raises(LayerSpecError, match="'h' has shape"):
        LayerBatch.from_arrays({**columns, "h": columns["h"][:2]})
    with pytest.raises(LayerSpecError, match="'cin' must be an integer, got inf"):
        LayerBatch.from_arrays({**columns, "cin": np.array([16.0, np.inf, 16.0])})
    with pytest.raises(LayerSpecError, match="'cout' must equal 'cin' for a dwconv"):
        LayerBatch.from_arrays({**columns, "op": np.array(["conv", "dwconv", "conv"], dtype=object)})


def test_distinct_groups_by_the_identity_key_and_take_subsets():
    specs = [LayerSpec.from_dict(GOOD), LayerSpec.from_dict({**GOOD, "density": 0.5}), LayerSpec.from_dict(GOOD),
             LayerSpec.from_dict({**GOOD, "density": 0.25 + 1e-9})]  # below the key's resolution: the same
    batch = LayerBatch.from_specs(specs)
    distinct, inverse = batch.distinct()
    assert len(distinct) == 2
    assert [distinct.layer_keys()[i] for i in inverse] == [s.key() for s in specs]
    assert batch.take(np.array([False, True, False, False])).to_specs() == [specs[1]]
    dense = batch.replace(density=np.ones(4))
    assert set(dense.density) == {1.0} and batch.density[1] == 0.5  # a new batch; the old one unchanged


def test_batch_physical_quantities_equal_the_spec_ones():
    specs = [LayerSpec.from_dict(GOOD), LayerSpec(op="dwconv", cin=8, cout=8, k=3, h=10, w=10),
             LayerSpec(op="conv", cin=512, cout=1000, k=1, h=1, w=1, density=0.01)]
    phys = LayerBatch.from_specs(specs).physical
    for name in ("out_h", "out_w", "weights", "nnz", "macs", "effective_macs", "input_bytes", "output_bytes",
                 "weight_bytes"):
        assert list(phys[name]) == pytest.approx([getattr(s, name) for s in specs]), name
