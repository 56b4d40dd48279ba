"""jcw.search.netexport and `jcw export --runtime sparse / --uniform`: pruned torch models as jcw network files
whose graphs compute what torch computes (checked with a reference executor, not the engine), BatchNorm
folded, activations fused, and anything the engine cannot run refused in one sentence."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from jcw.__main__ import main
from jcw.profiler.netfile import read_net
from jcw.search import zoo
from jcw.search.errors import SearchError
from jcw.search.netexport import export_network, pruned_conv_layers
from jcw.search.prune import apply_genome, make_permanent
from jcw.search.uniform import uniform_candidate
from net_reference import run_network

#: The 224x224 zoo models at 64x64: the same graphs, a fraction of the arithmetic.
SMALL = {"resnet18": (1, 3, 64, 64), "resnet50": (1, 3, 64, 64), "mobilenet_v1": (1, 3, 64, 64),
         "mobilenet_v2": (1, 3, 64, 64), "digits": (1, 1, 8, 8)}


def _example(shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _matches_torch(network, model=None):
    """The exported graph run by the reference executor against torch's output (the file's check pair)."""
    got = run_network(network.nodes, network.tensors, network.input_name, network.output, network.check_input)
    if model is not None:
        with torch.no_grad():
            want = model(torch.from_numpy(network.check_input)).numpy().reshape(got.shape)
        assert np.array_equal(want, network.check_output)
    error = float(np.abs(got - network.check_output).max())
    assert error <= 1e-4 * max(1.0, float(np.abs(network.check_output).max())), error
    return error


@pytest.mark.slow
@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_every_zoo_model_pruned_exports_a_graph_that_matches_torch(name):
    model, _ = zoo.build(name)
    example = _example(SMALL[name])
    space, x = uniform_candidate(model, example, 0.5, 0.3, name)
    pruned = make_permanent(apply_genome(model, space, x)).eval()
    sparse = pruned_conv_layers(space, x)
    network = export_network(pruned, example, name=name, sparse_layers=sparse)
    _matches_torch(network, pruned)
    ops = {node["op"] for node in network.nodes}
    assert ops <= {"conv2d", "add", "max_pool2d", "global_avg_pool", "linear"}
    convs = [node for node in network.nodes if node["op"] == "conv2d"]
    # every BatchNorm folded (each conv now has a bias), every activation fused
    assert all(node["bias"] is not None for node in convs)
    assert any(node["activation"] != "none" for node in convs)
    # sparse: exactly the weight-pruned groups == 1 convolutions, never the stem or a depthwise one
    assert network.sparse_layers == sparse and sparse
    by_name = {node["name"]: node for node in convs}
    assert all(by_name[n]["groups"] == 1 and by_name[n]["cin"] > 3 for n in sparse)
    for n in sparse:
        density = np.count_nonzero(network.tensors[by_name[n]["weight"]]) / network.tensors[by_name[n]["weight"]].size
        assert density == pytest.approx(0.3, abs=0.01)
    if name.startswith("mobilenet"):
        assert all(by_name[n]["k"] == 1 for n in sparse)
        assert len(sparse) == sum(1 for node in convs if node["k"] == 1)
    if name.startswith("resnet"):
        assert {"add", "max_pool2d"} <= ops and {by_name[n]["k"] for n in sparse} == {1, 3}


def test_batchnorm_is_folded_into_the_convolution():
    torch.manual_seed(0)
    conv, norm = nn.Conv2d(4, 6, 3, padding=1, bias=True), nn.BatchNorm2d(6)
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    model = nn.Sequential(conv, norm, nn.ReLU6()).eval()
    network = export_network(model, _example((1, 4, 5, 5)))
    assert [node["op"] for node in network.nodes] == ["conv2d"]
    node = network.nodes[0]
    assert node["activation"] == "relu6" and not node["sparse"]
    scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).detach().numpy()
    expected_bias = ((conv.bias - norm.running_mean) * torch.from_numpy(scale) + norm.bias).detach().numpy()
    assert np.allclose(network.tensors[node["weight"]], conv.weight.detach().numpy() * scale[:, None, None, None],
                       atol=1e-6)
    assert np.allclose(network.tensors[node["bias"]], expected_bias, atol=1e-6)
    _matches_torch(network, model)


class Functional(nn.Module):
    """Functional spellings: relu6 / hardtanh(0, 6) / clamp, max_pool2d, mean over H, W, view, identity."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.skip, self.drop, self.fc = nn.Identity(), nn.Dropout(0.5), nn.Linear(8, 4)

    def forward(self, x):
        x = nn.functional.max_pool2d(nn.functional.hardtanh(self.a(x), 0.0, 6.0), 2)
        y = nn.functional.relu6(self.b(self.skip(x)))
        z = torch.clamp(self.c(y) + x, min=0)
        return self.fc(self.drop(z.mean(dim=(2, 3), keepdim=True).view(1, -1)))


def test_functional_operators_fuse_and_match_torch():
    model = Functional().eval()
    network = export_network(model, _example((1, 3, 8, 8)), sparse_layers={"b", "c"})
    assert [node["op"] for node in network.nodes] == ["conv2d", "max_pool2d", "conv2d", "conv2d", "add",
                                                     "global_avg_pool", "linear"]
    assert [node.get("activation") for node in network.nodes] == ["relu6", None, "relu6", "none", "relu", None, None]
    assert network.sparse_layers == ["b"]  # the depthwise "c" is asked for but runs dense
    _matches_torch(network, model)


@pytest.mark.parametrize("layers, words", [
    ([nn.Conv2d(3, 4, 3), nn.Sigmoid()], "the sparse engine cannot run 1 (Sigmoid)"),
    ([nn.Conv2d(3, 4, 3), nn.AvgPool2d(2)], "the sparse engine cannot run 1 (AvgPool2d)"),
    ([nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.ReLU()], "the sparse engine cannot run 2 (ReLU)"),
    ([nn.Conv2d(3, 4, 3, dilation=2)], "the sparse engine cannot run 0 (Conv2d with kernel"),
    ([nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 2)], "the sparse engine cannot run 1 (Flatten)"),
])
def test_an_operator_the_engine_cannot_run_is_one_sentence(layers, words):
    with pytest.raises(SearchError) as caught:
        export_network(nn.Sequential(*layers).eval(), _example((1, 3, 8, 8)))
    assert words in str(caught.value) and "\n" not in str(caught.value)


def _cli(capsys, *argv):
    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.slow
def test_uniform_export_writes_a_network_file_read_net_accepts(tmp_path, capsys):
    status, out, err = _cli(capsys, "export", "--model", "digits", "--uniform", "width=0.5,density=0.3",
                            "--runtime", "sparse", "--out", str(tmp_path / "d.pte"), "--json")
    assert status == 0, err
    report = json.loads(out)
    assert report["pte"] == str(tmp_path / "d.pte") and report["net"] == str(tmp_path / "d.jcwnet")
    assert (tmp_path / "d.pte").read_bytes()[4:8] == b"ET12" and report["max_abs_err"] < 1e-4
    net = read_net(tmp_path / "d.jcwnet")
    assert net.sparse_layers == report["net_sparse_layers"] == ["conv2", "conv3", "conv4"]  # not the stem conv1
    widths = {node["name"]: node["cout"] for node in net.nodes if node["op"] == "conv2d"}
    assert widths == {"conv1": 16, "conv2": 32, "conv3": 32, "conv4": 64}
    assert json.loads((tmp_path / "d.export.json").read_text())["net"] == report["net"]
    # runtime executorch (the default) writes the dense deployment only
    status, out, err = _cli(capsys, "export", "--model", "digits", "--uniform", "width=0.5",
                            "--out", str(tmp_path / "e.pte"), "--json")
    assert status == 0 and json.loads(out)["net"] is None and not (tmp_path / "e.jcwnet").exists()


@pytest.mark.parametrize("argv, words", [
    (["--uniform", "width=0,density=0.3"], "--uniform width must be a number in (0, 1], got '0'"),
    (["--uniform", "width=0.5,density=1.5"], "--uniform density must be a number in (0, 1], got '1.5'"),
    (["--uniform", "depth=0.5"], "--uniform must look like width=W,density=D"),
    (["--uniform", "width=0.5", "--pick", "3"], "drop --pick"),
    (["--uniform", "width=0.5", "--run", "r"], "not both"),
    ([], "and got neither"),
])
def test_uniform_export_bad_input_is_one_sentence(tmp_path, capsys, argv, words):
    status, out, err = _cli(capsys, "export", "--model", "digits", *argv, "--out", str(tmp_path / "x.pte"))
    assert status == 2 and out == "" and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0], err
    assert list(tmp_path.iterdir()) == []


def test_uniform_export_of_a_model_outside_the_zoo_is_one_sentence(tmp_path, capsys):
    status, _, err = _cli(capsys, "export", "--model", "vgg16", "--uniform", "width=0.5", "--out",
                          str(tmp_path / "x.pte"))
    assert status == 2 and "--uniform needs a zoo model" in err and err.count("\n") == 1
