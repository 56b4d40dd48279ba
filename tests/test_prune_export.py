"""Applying genomes to real torch models and exporting them to ExecuTorch."""
import copy

import numpy as np
import pytest
import torch

from jcw.search import zoo
from jcw.search.errors import SearchError
from jcw.search.export import export_pte, run_pte
from jcw.search.genome import SearchSpace
from jcw.search.graph import read_model
from jcw.search.prune import (
    apply_genome,
    channel_order,
    check_against_specs,
    load_pruned,
    make_permanent,
    recalibrate_batchnorm,
    save_pruned,
)


def _space(name, shape=None):
    model, default = zoo.build(name)
    shape = shape or default
    return model, SearchSpace(read_model(model, torch.randn(*shape))), torch.randn(*shape)


@pytest.mark.parametrize("name,shape", [("resnet18", (1, 3, 64, 64)), ("mobilenet_v2", (1, 3, 64, 64)),
                                        ("resnet50", (1, 3, 64, 64))])
def test_pruned_model_runs_and_matches_specs(name, shape):
    model, space, x = _space(name, shape)
    rng = np.random.default_rng(0)
    genome = rng.integers(space.xl, space.xu + 1, size=space.n_var)
    pruned = apply_genome(model, space, genome).eval()
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    check_against_specs(pruned, x, space.layer_specs(genome))
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_spec_check_catches_a_mismatch():
    model, space, x = _space("digits")
    genome = space.uniform(0.5, 0.5)
    pruned = apply_genome(model, space, genome)
    with pytest.raises(SearchError, match="candidate says"):
        check_against_specs(pruned, x, space.layer_specs(space.uniform(1.0, 0.5)))


def test_highest_l1_channels_are_kept_and_masks_survive_training():
    model, space, x = _space("digits")
    with torch.no_grad():
        model.conv1.weight[5].mul_(100.0)          # channel 5 is by far the most important
        model.conv1.weight[7].mul_(50.0)
    stem_group = space.graph.layer("conv1").out_group
    assert list(channel_order(model, space)[stem_group][:2]) == [5, 7]
    genome = space.uniform(0.5, 0.5)
    pruned = apply_genome(model, space, genome)
    kept_rows = pruned.conv1.weight_orig if hasattr(pruned.conv1, "weight_orig") else pruned.conv1.weight
    assert pruned.conv1.out_channels == 16 and pruned.bn1.num_features == 16 and pruned.conv2.in_channels == 16
    assert torch.allclose(kept_rows.abs().sum((1, 2, 3)).max(), model.conv1.weight[5].abs().sum())
    mask = pruned.conv2.weight_mask
    assert int(mask.sum()) == space.layer_specs(genome)[1].nnz
    optimizer = torch.optim.SGD(pruned.parameters(), lr=0.1)
    pruned.train()
    pruned(torch.randn(8, 1, 8, 8)).sum().backward()
    optimizer.step()
    assert (pruned.conv2.weight[mask == 0] == 0).all()          # fine-tuning keeps removed weights at zero


def test_batchnorm_recalibration_follows_the_data():
    model, space, _ = _space("digits")
    pruned = apply_genome(model, space, space.uniform(0.5, 1.0))
    data = torch.randn(256, 1, 8, 8) * 3 + 2
    recalibrate_batchnorm(pruned, data.split(64))
    with torch.no_grad():
        conv_out = pruned.conv1(data)
    assert torch.allclose(pruned.bn1.running_mean, conv_out.mean((0, 2, 3)), atol=1e-4)
    assert not pruned.training


def test_save_and_load_round_trip(tmp_path):
    model, space, x = _space("digits")
    genome = space.uniform(0.6, 0.4)
    pruned = apply_genome(model, space, genome).eval()
    with torch.no_grad():
        pruned.conv4.weight_orig.add_(0.5)        # any change must survive the round trip
    path = save_pruned(pruned, tmp_path / "p.pt")
    again = load_pruned(model, space, genome, path).eval()
    assert torch.equal(again(x), pruned(x))
    assert torch.equal(again.conv2.weight_mask, pruned.conv2.weight_mask)


@pytest.mark.slow
def test_executorch_export_runs_through_runtime(tmp_path):
    model, space, x = _space("digits")
    pruned = make_permanent(apply_genome(model, space, space.uniform(0.5, 0.5))).eval()
    path = export_pte(pruned, x, tmp_path / "m.pte")
    result = run_pte(path, x, reps=3)
    with torch.no_grad():
        expected = pruned(x)
    assert path.stat().st_size > 0
    assert result["output"].shape == expected.shape
    assert torch.allclose(result["output"], expected, atol=1e-4)
    assert result["median_ms"] > 0
    unpruned = export_pte(copy.deepcopy(model).eval(), x, tmp_path / "full.pte")
    assert unpruned.stat().st_size > path.stat().st_size     # sliced channels really left the program
