"""Model reader: prunable layers, layer specs and channel-coupling groups found by tracing."""
import pytest
import torch
from torch import nn

from jcw.search import zoo
from jcw.search.errors import SearchError
from jcw.search.graph import read_model


def _read(name):
    model, shape = zoo.build(name)
    return read_model(model, torch.randn(*shape))


def _group_of_output(graph, layer_name):
    return graph.groups[graph.layer(layer_name).out_group]


def test_resnet18_residual_stages_share_one_group_each():
    graph = _read("resnet18")
    assert len(graph.layers) == 21                      # 20 convs + fc
    stage1 = _group_of_output(graph, "conv1")
    # the stem, both block outputs of layer1 share channels through the residual additions
    assert set(stage1.producers) == {"conv1", "layer1.0.conv2", "layer1.1.conv2"}
    assert stage1.residual and not stage1.fixed and stage1.channels == 64
    for stage, channels in (("layer2", 128), ("layer3", 256), ("layer4", 512)):
        group = _group_of_output(graph, f"{stage}.0.conv2")
        assert set(group.producers) == {f"{stage}.0.conv2", f"{stage}.0.downsample.0", f"{stage}.1.conv2"}
        assert group.residual and group.channels == channels
        assert f"{stage}.0.downsample.1" in group.norms
    inner = _group_of_output(graph, "layer2.0.conv1")
    assert inner.producers == ["layer2.0.conv1"] and inner.consumers == ["layer2.0.conv2"]
    assert not inner.residual
    # the classifier reads the last stage; its outputs and the image are fixed
    assert graph.layer("fc").in_group == _group_of_output(graph, "layer4.1.conv2").index
    assert _group_of_output(graph, "fc").fixed
    assert graph.groups[graph.layer("conv1").in_group].fixed
    assert graph.layer("conv1").first and graph.layer("fc").last
    assert sum(not g.fixed for g in graph.groups) == 4 + 8   # 4 residual stages + 8 block-inner groups


def test_resnet18_layer_specs():
    graph = _read("resnet18")
    stem = graph.layer("conv1").spec
    assert (stem.op, stem.cin, stem.cout, stem.k, stem.stride, stem.pad, stem.h) == ("conv", 3, 64, 7, 2, 3, 224)
    down = graph.layer("layer3.0.downsample.0").spec
    assert (down.cin, down.cout, down.k, down.stride, down.h, down.w) == (128, 256, 1, 2, 28, 28)
    fc = graph.layer("fc").spec
    assert (fc.op, fc.cin, fc.cout, fc.k, fc.h, fc.w) == ("conv", 512, 1000, 1, 1, 1)


def test_mobilenetv2_depthwise_ties_input_to_output():
    graph = _read("mobilenet_v2")
    depthwise = [layer for layer in graph.layers if layer.depthwise]
    assert len(depthwise) == 17
    for layer in depthwise:
        assert layer.in_group == layer.out_group
        group = graph.groups[layer.in_group]
        assert layer.name in group.depthwise
        assert layer.spec.cin == layer.spec.cout == group.channels
    # an expansion block: expand conv -> dw -> project conv; expand and project read/write the same group
    # only when the block is residual
    block = "features.3.conv"                                      # 24 -> 24, stride 1: residual
    expand, dw, project = f"{block}.0.0", f"{block}.1.0", f"{block}.2"
    assert graph.layer(expand).out_group == graph.layer(dw).in_group
    assert graph.layer(project).in_group == graph.layer(dw).out_group
    assert graph.layer(project).out_group == graph.layer(expand).in_group  # x + conv(x)
    assert graph.groups[graph.layer(project).out_group].residual
    # 24-channel stage: features.2 (stride 2, no residual) produces it, features.3 adds to it
    assert set(graph.groups[graph.layer(project).out_group].producers) == {"features.2.conv.2", project}


def test_all_zoo_models_read():
    counts = {}
    for name in zoo.ZOO:
        graph = _read(name)
        counts[name] = len(graph.layers)
        assert all(not g.fixed or g.why_fixed for g in graph.groups)
    assert counts == {"resnet18": 21, "resnet50": 54, "mobilenet_v1": 28, "mobilenet_v2": 53, "digits": 5}


def test_concat_and_spatial_flatten_fix_their_groups():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
            self.c = nn.Conv2d(16, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8 * 8, 10)

        def forward(self, x):
            y = self.c(torch.cat([self.a(x), self.b(x)], 1))
            return self.fc(torch.flatten(y, 1))

    graph = read_model(Odd(), torch.randn(1, 3, 8, 8))
    assert graph.groups[graph.layer("a").out_group].fixed
    assert graph.groups[graph.layer("c").out_group].fixed   # flattened with its spatial positions


def test_untraceable_or_grouped_models_give_one_sentence():
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 3, groups=2)

        def forward(self, x):
            return self.conv(x)

    with pytest.raises(SearchError, match="grouped convolution"):
        read_model(Grouped(), torch.randn(1, 4, 8, 8))
    with pytest.raises(SearchError, match="does not run on an input"):
        read_model(zoo.build("digits")[0], torch.randn(1, 3, 8, 8))
