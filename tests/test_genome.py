"""Genomes: bounds of sensitive layers, decoding to channels/densities/specs, vectorized objectives."""
import numpy as np
import pytest
import torch

from jcw.profiler.layerspec import LayerBatch
from jcw.search import zoo
from jcw.search.errors import SearchError
from jcw.search.genome import Bounds, SearchSpace
from jcw.search.graph import read_model
from jcw.search.objectives import LatencyModel, ProxyAccuracy
from search_standin import MacsPredictor


@pytest.fixture(scope="module")
def resnet():
    model, shape = zoo.build("resnet18")
    return model, SearchSpace(read_model(model, torch.randn(*shape)))


def test_genes_and_bounds(resnet):
    _, space = resnet
    graph = space.graph
    # 20 density genes: every groups-1 conv; the classifier (fc) runs dense in the sparse engine
    assert space.n_width == 12 and space.n_density == 20 and space.n_var == 32
    width_lb = dict(zip(space.width_groups, space.width_choices[space.xl[:space.n_width]]))
    stem_group = graph.layer("conv1").out_group
    assert width_lb[stem_group] == pytest.approx(0.5)                  # residual + first: max(0.4, 0.5)
    assert width_lb[graph.layer("layer2.0.conv1").out_group] == pytest.approx(0.3)   # strided
    assert width_lb[graph.layer("layer1.0.conv1").out_group] == pytest.approx(0.2)   # plain
    dens_lb = dict(zip(space.density_layers, space.density_choices[space.xl[space.n_width:]]))
    names = [layer.name for layer in graph.layers]
    assert dens_lb[names.index("conv1")] == pytest.approx(0.8)
    assert names.index("fc") not in dens_lb
    assert dens_lb[names.index("layer3.0.conv1")] == pytest.approx(0.2)
    assert dens_lb[names.index("layer3.0.conv2")] == pytest.approx(0.1)
    strict = SearchSpace(graph, bounds=Bounds(min_width=0.9, min_density=1.0))
    assert (strict.xl[strict.n_width:] == strict.xu[strict.n_width:]).all()


def test_columns_match_layer_specs_and_coupling(resnet):
    _, space = resnet
    rng = np.random.default_rng(1)
    X = rng.integers(space.xl, space.xu + 1, size=(5, space.n_var))
    cols = space.columns(X)
    assert len(cols["op"]) == 5 * space.n_layers
    for i in range(5):
        expected = LayerBatch.from_specs(space.layer_specs(X[i]))
        rows = slice(i * space.n_layers, (i + 1) * space.n_layers)
        for key, values in expected.items():
            assert list(cols[key][rows]) == list(values), key
        specs = {layer.name: s for layer, s in zip(space.graph.layers, space.layer_specs(X[i]))}
        # residual coupling: both convs writing into stage 2 and the next reader agree on the channels
        assert specs["layer2.0.conv2"].cout == specs["layer2.0.downsample.0"].cout == specs["layer2.1.conv1"].cin
        assert specs["conv1"].cin == 3 and specs["fc"].cout == 1000


def test_check_rejects_bad_genomes(resnet):
    _, space = resnet
    with pytest.raises(SearchError, match="32 integer genes"):
        space.check(np.zeros((1, 5), dtype=int))
    bad = space.uniform(1.0, 1.0)
    bad[0] = space.xl[0] - 1
    with pytest.raises(SearchError, match="lower bound"):
        space.check(bad)
    with pytest.raises(SearchError, match="bound 'min_width'"):
        Bounds(min_width=0.0)


def test_uniform_references(resnet):
    _, space = resnet
    half = space.layer_specs(space.uniform(0.5, 1.0))
    full = space.layer_specs(space.uniform(1.0, 1.0))
    assert all(s.density == 1.0 for s in half)
    assert sum(s.macs for s in half) < 0.35 * sum(s.macs for s in full)


def test_sparse_runtime_latency_is_vectorized_and_summed_as_the_engine_runs_layers(resnet):
    """A stand-in without program models: every layer as the engine runs it (sparse below density 1), summed."""
    _, space = resnet
    predictor = MacsPredictor()
    latency = LatencyModel(predictor, space, "sparse")
    rng = np.random.default_rng(2)
    X = rng.integers(space.xl, space.xu + 1, size=(7, space.n_var))
    total = latency(X)
    assert predictor.calls == 1 and latency.rows == 7 * space.n_layers
    for i in range(7):
        one = predictor.predict(space.layer_specs(X[i]))
        runs_sparse = np.array([s.density < 1.0 for s in space.layer_specs(X[i])])
        assert total[i] == pytest.approx(np.where(runs_sparse, one["sparse_ms"], one["dense_ms"]).sum())
    per_layer, sparse = latency.per_layer(space.uniform(1.0, 0.1)[None])
    assert sparse.any() and per_layer.sum() < latency(space.uniform(1.0, 1.0)[None])[0]


def test_executorch_runtime_without_program_model_sums_dense_layers(resnet):
    """A predictor that cannot predict whole programs: the sum of dense layers, said as such; density is free."""
    _, space = resnet
    predictor = MacsPredictor()
    latency = LatencyModel(predictor, space)
    assert latency.runtime == "executorch" and not latency.whole_program and "no whole-program" in latency.program_note
    X = np.array([space.uniform(0.7, 1.0), space.uniform(0.7, 0.1)])
    dense = predictor.predict(space.columns(X))["dense_ms"].reshape(2, -1).sum(1)
    total = latency(X)
    assert total[0] == total[1] == pytest.approx(dense[0])
    per_layer, sparse = latency.per_layer(X)
    assert not sparse.any() and np.array_equal(per_layer[0], per_layer[1])


def test_proxy_accuracy_ranks_pruning(resnet):
    model, space = resnet
    proxy = ProxyAccuracy(model, space)
    full, mid, low = proxy(np.array([space.uniform(1, 1), space.uniform(0.7, 0.7), space.uniform(0.3, 0.3)]))
    assert full == pytest.approx(1.0)
    assert full > mid > low > 0
    rng = np.random.default_rng(3)
    X = rng.integers(space.xl, space.xu + 1, size=(6, space.n_var))
    assert np.allclose(proxy(X), [proxy(x[None])[0] for x in X])


def kept_parameter_share(model):
    """A user accuracy function (module:function) used by the test below."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters()) / 1e6


def test_user_accuracy_function_gets_the_pruned_model():
    from jcw.search.objectives import UserAccuracy
    model, shape = zoo.build("digits")
    space = SearchSpace(read_model(model, torch.randn(*shape)))
    user = UserAccuracy("test_genome:kept_parameter_share", model, space)
    full, half = user(np.array([space.uniform(1, 1), space.uniform(0.5, 0.5)]))
    assert full > 2 * half > 0
    assert len(user.cache) == 2
    with pytest.raises(SearchError, match="has no function"):
        UserAccuracy("test_genome:nothing_here", model, space)
    with pytest.raises(SearchError, match="cannot import module"):
        UserAccuracy("no_such_module_xyz:f", model, space)
