"""Feature math of the predictor: vectorised derived quantities equal LayerSpec's, features are what
they claim, and bad columns are refused with a sentence naming the column (synthetic specs: pure math)."""
import random

import numpy as np
import pytest

from jcw.predictor.errors import PredictorError
from jcw.predictor.features import (
    FEATURE_NAMES,
    MONOTONE,
    as_columns,
    feature_matrix,
    impl_quantities,
    physical,
    rows_per_l1_set,
)
from jcw.profiler.layerspec import LayerBatch, LayerSpec


def random_specs(n=200, seed=0):
    rng = random.Random(seed)
    specs = []
    while len(specs) < n:
        op = rng.choice(["conv", "dwconv"])
        cin = rng.randint(1, 300)
        k = rng.choice([1, 3, 5, 7])
        h = rng.randint(k, 60)
        specs.append(LayerSpec(op=op, cin=cin, cout=cin if op == "dwconv" else rng.randint(1, 300), k=k, h=h,
                               w=rng.randint(k, 60), stride=rng.choice([1, 2, 3]),
                               pad=rng.choice([None, 0, k // 2]), density=rng.uniform(0.01, 1.0)))
    return specs


def test_physical_quantities_equal_the_layer_spec_ones():
    specs = random_specs()
    phys = physical(as_columns(specs))
    for name, attr in (("out_h", "out_h"), ("out_w", "out_w"), ("weights", "weights"), ("nnz", "nnz"),
                       ("macs", "macs"), ("effective_macs", "effective_macs"), ("input_bytes", "input_bytes"),
                       ("output_bytes", "output_bytes"), ("weight_bytes", "weight_bytes")):
        np.testing.assert_allclose(phys[name], [getattr(s, attr) for s in specs], rtol=1e-12, err_msg=name)


def test_features_of_one_layer_by_hand():
    spec = LayerSpec(op="conv", cin=32, cout=64, k=3, h=28, w=28, stride=2, density=0.25)
    columns = as_columns([spec])
    dense = dict(zip(FEATURE_NAMES, feature_matrix(columns, "dense")[0]))
    sparse = dict(zip(FEATURE_NAMES, feature_matrix(columns, "sparse")[0]))
    out_hw = 14 * 14
    macs = out_hw * 64 * 32 * 9
    assert dense["is_sparse"] == 0 and sparse["is_sparse"] == 1 and dense["is_dwconv"] == 0
    assert dense["log_macs"] == pytest.approx(np.log2(macs))
    assert dense["log_work"] == pytest.approx(np.log2(macs))
    assert sparse["log_work"] == pytest.approx(np.log2(macs * 0.25))
    assert sparse["log_nnz"] == pytest.approx(np.log2(round(0.25 * 64 * 32 * 9)))
    assert sparse["log_im2col_bytes"] == pytest.approx(np.log2(1 + 32 * 9 * out_hw * 4))
    assert dense["log_im2col_bytes"] == 0.0  # the dense kernel needs no im2col buffer
    dense_bytes = 32 * 28 * 28 * 4 + 64 * out_hw * 4 + 64 * 32 * 9 * 4
    assert dense["log_intensity"] == pytest.approx(np.log2(macs / dense_bytes))
    assert dense["cout_tile_waste_16"] == 1.0 and dense["pixel_tile_waste_32"] == pytest.approx(224 / 196)
    # The dense kernel multiplies the pruned zeros too: its density features are those of density 1.
    assert dense["density"] == 1.0 and sparse["density"] == 0.25
    assert dense["log_nnz"] == pytest.approx(np.log2(64 * 32 * 9))
    assert dense["log_effective_macs"] == dense["log_macs"]
    # The sparse kernel is an SpMM over the im2col buffer: cin·k·k rows over the 14x14 output map.
    assert dense["log_cin"] == pytest.approx(np.log2(32)) and sparse["log_cin"] == pytest.approx(np.log2(32 * 9))
    assert dense["log_h"] == pytest.approx(np.log2(28)) and sparse["log_h"] == pytest.approx(np.log2(14))
    assert dense["log_input_bytes"] == pytest.approx(np.log2(32 * 28 * 28 * 4))
    assert sparse["log_input_bytes"] == pytest.approx(np.log2(32 * 9 * out_hw * 4))


def test_sparse_rows_that_share_an_l1_set_are_counted():
    # 64x64 maps put 16 KiB between rows: every row starts at the same offset of a 4 KiB set period.
    assert rows_per_l1_set(np.array([576.0]), np.array([64 * 64 * 4]))[0] == 576
    # 62x62 (15,376 B, gcd 16 with 4096): 64 sets hold the rows; 10 rows on 16x16 maps (1 KiB) use 4 sets.
    assert rows_per_l1_set(np.array([576.0]), np.array([62 * 62 * 4]))[0] == 9
    assert rows_per_l1_set(np.array([10.0]), np.array([16 * 16 * 4]))[0] == 2.5
    assert rows_per_l1_set(np.array([3.0]), np.array([7 * 7 * 4]))[0] == 1
    layers = [LayerSpec(op="conv", cin=64, cout=45, k=3, h=64, w=64, density=0.5),
              LayerSpec(op="conv", cin=64, cout=45, k=3, h=62, w=62, density=0.5)]
    sparse = [dict(zip(FEATURE_NAMES, row)) for row in feature_matrix(as_columns(layers), "sparse")]
    dense = [dict(zip(FEATURE_NAMES, row)) for row in feature_matrix(as_columns(layers), "dense")]
    assert sparse[0]["log_rows_per_l1_set"] == pytest.approx(np.log2(576))  # 576 im2col rows of 64x64 outputs
    assert sparse[1]["log_rows_per_l1_set"] == pytest.approx(np.log2(9))
    assert dense[0]["log_rows_per_l1_set"] == dense[1]["log_rows_per_l1_set"] == 0.0


def test_dense_features_do_not_depend_on_density_and_sparse_ones_do():
    layers = [LayerSpec(op="conv", cin=48, cout=40, k=1, h=14, w=14, density=d) for d in (0.1, 0.5, 1.0)]
    dense = feature_matrix(as_columns(layers), "dense")
    sparse = feature_matrix(as_columns(layers), "sparse")
    assert (dense == dense[0]).all()
    assert len({tuple(row) for row in sparse}) == 3


def test_the_32_channel_tile_is_a_feature_of_dense_convolutions_only():
    layers = [LayerSpec(op="conv", cin=48, cout=48, k=1, h=20, w=20),
              LayerSpec(op="conv", cin=48, cout=64, k=1, h=20, w=20),
              LayerSpec(op="dwconv", cin=48, cout=48, k=3, h=20, w=20)]
    dense = [dict(zip(FEATURE_NAMES, row)) for row in feature_matrix(as_columns(layers), "dense")]
    # 48 outputs fill two 32-lane tiles a third empty; 64 fill them; a depthwise layer tiles no output channels
    assert [row["dense_conv_tile_waste_32"] for row in dense] == [pytest.approx(64 / 48), 1.0, 1.0]
    assert dense[0]["cout_tile_waste_16"] == 1.0
    sparse = dict(zip(FEATURE_NAMES, feature_matrix(as_columns(layers[:1]), "sparse")[0]))
    assert sparse["dense_conv_tile_waste_32"] == 1.0


def test_one_by_one_sparse_layer_has_no_im2col_and_tile_waste_counts_padding():
    columns = as_columns([LayerSpec(op="conv", cin=16, cout=20, k=1, h=7, w=7, density=0.5)])
    quantities = impl_quantities(physical(columns), "sparse")
    assert quantities["im2col_bytes"][0] == 0.0 and quantities["im2col_rows"][0] == 0.0
    three = impl_quantities(physical(as_columns([LayerSpec(op="conv", cin=26, cout=2, k=3, h=5, w=5, density=0.5)])),
                            "sparse")
    assert three["im2col_rows"][0] == 26 * 3 * 3  # one gathered row per (channel, ky, kx)
    assert three["im2col_segments"][0] == 26 * 3 * 3 * 5  # each in one segment per output line (padded: 5)
    assert three["im2col_strided_bytes"][0] == 0.0  # stride 1: rows are copied, not gathered
    strided = impl_quantities(physical(as_columns([LayerSpec(op="conv", cin=3, cout=8, k=3, stride=2, pad=1, h=9,
                                                             w=9, density=0.5)])), "sparse")
    assert strided["im2col_segments"][0] == 3 * 3 * 3 * 5  # a 9 px map at stride 2 has 5 output lines
    assert strided["im2col_strided_bytes"][0] == strided["im2col_bytes"][0] == 3 * 9 * 25 * 4
    assert impl_quantities(physical(columns), "dense")["im2col_segments"][0] == 0.0
    row = dict(zip(FEATURE_NAMES, feature_matrix(columns, "sparse")[0]))
    assert row["cout_tile_waste_4"] == 1.0
    assert row["cout_tile_waste_8"] == pytest.approx(24 / 20)
    assert row["cout_tile_waste_16"] == pytest.approx(32 / 20)
    assert row["pixel_tile_waste_8"] == pytest.approx(56 / 49)


def test_columns_dict_gets_default_pad_and_stride_and_matches_specs():
    specs = random_specs(50, seed=3)
    columns = LayerBatch.from_specs(specs).to_dict()
    no_defaults = {k: v for k, v in columns.items() if k not in ("pad", "stride")}
    defaulted = as_columns(no_defaults)
    np.testing.assert_array_equal(defaulted["pad"], columns["k"] // 2)
    np.testing.assert_array_equal(defaulted["stride"], np.ones(50))
    np.testing.assert_array_equal(feature_matrix(as_columns(columns), "dense"), feature_matrix(as_columns(specs),
                                                                                               "dense"))


@pytest.mark.parametrize("column, value, words", [
    ("op", "deconv", "'op'"), ("cin", 0, "'cin'"), ("density", 1.5, "'density'"), ("density", 0.0, "'density'"),
    ("k", 99, "'k'"), ("stride", -1, "'stride'"),
])
def test_bad_columns_are_refused_naming_the_column(column, value, words):
    columns = LayerBatch.from_specs([LayerSpec(op="conv", cin=8, cout=8, k=3, h=8, w=8)] * 3).to_dict()
    columns[column] = columns[column].copy()
    columns[column][1] = value
    with pytest.raises(PredictorError, match=words):
        as_columns(columns)


def test_missing_column_and_ragged_column_are_refused():
    columns = LayerBatch.from_specs([LayerSpec(op="conv", cin=8, cout=8, k=3, h=8, w=8)] * 3).to_dict()
    with pytest.raises(PredictorError, match="'cout'"):
        as_columns({k: v for k, v in columns.items() if k != "cout"})
    with pytest.raises(PredictorError, match="'h'"):
        as_columns({**columns, "h": columns["h"][:2]})
    with pytest.raises(PredictorError, match="LayerSpec"):
        as_columns([{"op": "conv"}])


def test_monotone_constraints_cover_every_size_feature():
    signs = dict(zip(FEATURE_NAMES, MONOTONE))
    assert all(signs[name] == 1 for name in FEATURE_NAMES if name.startswith("log_") and name != "log_intensity")
    assert signs["stride"] == 0 and signs["is_sparse"] == 0
