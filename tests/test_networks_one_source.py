"""One source for the real networks: the profiler's layer lists (networks.json, from the architecture
tables) and the search's torch zoo built from the same tables have the same names and the same layers."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from jcw.profiler import networks
from jcw.profiler.layerspec import LayerSpec
from jcw.search import zoo
from jcw.search.graph import read_model


def test_networks_json_is_what_the_tables_generate():
    assert json.loads(networks.DATA_PATH.read_text(encoding="utf-8")) == networks.generate()


def test_one_name_per_network_and_the_old_names_are_aliases():
    assert [name for name in zoo.ZOO if name != "digits"] == list(networks.NETWORKS)
    for alias, name in networks.ALIASES.items():
        assert alias not in zoo.ZOO and zoo.canonical_name(alias) == name
        assert networks.network_layers(alias) == networks.network_layers(name)
    assert zoo.is_zoo_model("mobilenetv2") and not zoo.is_zoo_model("mobilenet")


@pytest.mark.slow
@pytest.mark.parametrize("name", networks.NETWORKS)
def test_the_zoo_model_has_the_profilers_layers(name):
    model, shape = zoo.build(name)
    graph = read_model(model, torch.zeros(shape))
    traced = Counter(layer.spec.key() for layer in graph.layers)
    listed = Counter(networks.to_spec(layer).key() for layer in networks.network_layers(name))
    assert traced == listed
    assert len(graph.layers) == len(networks.network_layers(name))
    # the alias builds the very same network
    alias = next((a for a, n in networks.ALIASES.items() if n == name), None)
    if alias is not None:
        again, _ = zoo.build(alias)
        assert [p.shape for p in again.parameters()] == [p.shape for p in model.parameters()]
    assert all(isinstance(layer.spec, LayerSpec) for layer in graph.layers)
