"""The sparse network engine inside ptebench ("net" plan lines, NETFILE.md): small torch networks with
random (and pruned) weights written as jcw network files run to torch's output, report the layers run
sparse and the layout conversions, refuse damaged or unrunnable files with one sentence while the next
line still runs, and the sparse kernel pays off at low density. One network also runs in the arm64
bundle under qemu.

Requires `make runner` (and `make runner-android` for the bundle test) beforehand; never builds them."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from arm64_bundle import arm64_bundle
from jcw.android_harness import runner
from jcw.android_harness.device import DeviceError
from jcw.profiler.netfile import NetFileError, read_net, write_net

FAST = ["--warmup", "1", "--min-reps", "3", "--min-time-ms", "0"]
ENGINE_KEYS = {"id", "runtime", "threads", "us_min", "us_median", "us_mean", "us_std", "reps", "timed_us", "line_us",
               "load_us", "input_shape", "output_shape", "sparse_layers", "layers", "conversions", "max_abs_error",
               "xnnpack", "xnnpack_sparse"}


def prune(module: nn.Module, density: float, seed: int) -> nn.Module:
    """Keep exactly round(density * n) weights, at random positions."""
    with torch.no_grad():
        weight = module.weight.view(-1)
        order = torch.randperm(weight.numel(), generator=torch.Generator().manual_seed(seed))
        weight[order[round(density * weight.numel()):]] = 0.0
    return module


class Graph:
    """Nodes and tensors of a network file, named after the torch modules they come from."""

    def __init__(self) -> None:
        self.nodes: list[dict] = []
        self.tensors: dict[str, np.ndarray] = {}

    def _params(self, name: str, module: nn.Module) -> dict:
        self.tensors[f"{name}.weight"] = module.weight.detach().numpy()
        if module.bias is not None:
            self.tensors[f"{name}.bias"] = module.bias.detach().numpy()
        return {"weight": f"{name}.weight", "bias": f"{name}.bias" if module.bias is not None else None}

    def conv(self, name, m: nn.Conv2d, src, dst, activation="none", sparse=False):
        self.nodes.append({"op": "conv2d", "name": name, "input": src, "output": dst, "cin": m.in_channels,
                           "cout": m.out_channels, "k": m.kernel_size[0], "stride": m.stride[0], "pad": m.padding[0],
                           "groups": m.groups, "activation": activation, "sparse": sparse, **self._params(name, m)})

    def add(self, name, a, b, dst, activation="none"):
        self.nodes.append({"op": "add", "name": name, "inputs": [a, b], "output": dst, "activation": activation})

    def max_pool(self, name, src, dst, k, stride, pad):
        self.nodes.append({"op": "max_pool2d", "name": name, "input": src, "output": dst, "k": k, "stride": stride,
                           "pad": pad})

    def gap(self, name, src, dst):
        self.nodes.append({"op": "global_avg_pool", "name": name, "input": src, "output": dst})

    def linear(self, name, m: nn.Linear, src, dst):
        self.nodes.append({"op": "linear", "name": name, "input": src, "output": dst, "cin": m.in_features,
                           "cout": m.out_features, **self._params(name, m)})


class Net(nn.Module):
    """A torch network plus its graph; `sparse` names the convolutions the file marks sparse."""

    sparse: tuple[str, ...] = ()

    def graph(self, g: Graph) -> str:  # returns the output value
        raise NotImplementedError


class ConvRelu(Net):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))

    def graph(self, g):
        g.conv("conv", self.conv, "x", "y", "relu")
        return "y"


class Depthwise(Net):
    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)

    def forward(self, x):
        return torch.clamp(self.dw(torch.relu(self.pw(x))), 0, 6)

    def graph(self, g):
        g.conv("pw", self.pw, "x", "a", "relu")
        g.conv("dw", self.dw, "a", "y", "relu6")
        return "y"


class SparsePointwise(Net):
    """Dense stem, sparse 1x1, global average pool, linear: conversions input->NHWC, NHWC->NCHW."""

    def __init__(self, density: float, width: int = 32):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.expand = prune(nn.Conv2d(16, width, 1), density, seed=int(density * 100))
        self.fc = nn.Linear(width, 10)
        self.sparse = ("expand",)

    def forward(self, x):
        return self.fc(torch.relu(self.expand(torch.relu(self.stem(x)))).mean((2, 3)))

    def graph(self, g):
        g.conv("stem", self.stem, "x", "a", "relu")
        g.conv("expand", self.expand, "a", "b", "relu", sparse=True)
        g.gap("pool", "b", "c")
        g.linear("fc", self.fc, "c", "y")
        return "y"


class SparseIm2col(Net):
    """A sparse 3x3 stride-2 padded convolution (im2col in front of SpMM) straight on the NCHW input."""

    def __init__(self):
        super().__init__()
        self.conv = prune(nn.Conv2d(3, 16, 3, stride=2, padding=1), 0.3, seed=5)
        self.sparse = ("conv",)

    def forward(self, x):
        return torch.relu(self.conv(x))

    def graph(self, g):
        g.conv("conv", self.conv, "x", "y", "relu", sparse=True)
        return "y"


class Residual(Net):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = prune(nn.Conv2d(8, 8, 1), 0.5, seed=7)
        self.sparse = ("b",)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        return torch.relu(self.b(torch.relu(self.a(s))) + s)

    def graph(self, g):
        g.conv("stem", self.stem, "x", "s", "relu")
        g.conv("a", self.a, "s", "t", "relu")
        g.conv("b", self.b, "t", "u", "none", sparse=True)
        g.add("add", "u", "s", "y", "relu")
        return "y"


class MaxPool(Net):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return nn.functional.max_pool2d(self.conv(x), 3, 2, 1)

    def graph(self, g):
        g.conv("conv", self.conv, "x", "a")
        g.max_pool("pool", "a", "y", 3, 2, 1)
        return "y"


class NchwChain(Net):
    """Sparse stem, depthwise, sparse 1x1, pool, linear: all NCHW, so no conversion at all."""

    def __init__(self):
        super().__init__()
        self.stem = prune(nn.Conv2d(3, 16, 3, stride=2, padding=1), 0.4, seed=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = prune(nn.Conv2d(16, 24, 1), 0.2, seed=2)
        self.fc = nn.Linear(24, 6)
        self.sparse = ("stem", "pw")

    def forward(self, x):
        y = torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.stem(x))))))
        return self.fc(y.mean((2, 3)))

    def graph(self, g):
        g.conv("stem", self.stem, "x", "a", "relu", sparse=True)
        g.conv("dw", self.dw, "a", "b", "relu")
        g.conv("pw", self.pw, "b", "c", "relu", sparse=True)
        g.gap("pool", "c", "d")
        g.linear("fc", self.fc, "d", "y")
        return "y"


def save(net: Net, path: Path, shape=(1, 3, 12, 12), seed: int = 0) -> dict:
    """Writes `net` as a network file checked against torch; returns its input and torch's output."""
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    with torch.no_grad():
        want = net.eval()(x)
    g = Graph()
    output = net.graph(g)
    write_net(path, name=type(net).__name__, input_name="x", input_shape=list(shape), output=output, nodes=g.nodes,
              tensors=g.tensors, check_input=x.numpy(), check_output=want.numpy())
    return {"path": str(path), "x": x.numpy(), "want": want.numpy()}


@pytest.fixture(scope="module")
def binary() -> Path:
    try:
        return runner.host_ptebench()
    except DeviceError as exc:
        pytest.fail(f"{exc} (tests never build it themselves)")


def run(binary: Path, lines: list, args: list[str] = FAST) -> tuple[dict, list[dict]]:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    done = subprocess.run([str(binary), *args], input=text.encode(), capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    out = [json.loads(line) for line in done.stdout.decode().splitlines()]
    return out[0]["runner"], out[1:]


NETWORKS = {"conv_relu": ConvRelu, "depthwise": Depthwise, "sparse_1x1_d0.1": lambda: SparsePointwise(0.1),
            "sparse_1x1_d0.5": lambda: SparsePointwise(0.5), "sparse_3x3_im2col": SparseIm2col,
            "residual_add": Residual, "max_pool": MaxPool, "nchw_chain": NchwChain}


@pytest.fixture(scope="module")
def engine_runs(binary, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("nets")
    torch.manual_seed(0)
    nets = {name: (make := factory(), save(make, root / f"{name}.jcwnet")) for name, factory in NETWORKS.items()}
    lines = [{"id": name, "net": saved["path"], "threads": 1} for name, (_, saved) in nets.items()]
    header, results = run(binary, lines, FAST + ["--dump", str(root)])
    return {"header": header, "root": root, "nets": nets, "results": {r["id"]: r for r in results}}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_engine_output_equals_torch_and_names_its_sparse_layers(engine_runs, name):
    net, saved = engine_runs["nets"][name]
    result = engine_runs["results"][name]
    assert "error" not in result, result
    assert ENGINE_KEYS <= set(result) and result["runtime"] == "sparse" and "backends" not in result
    assert result["sparse_layers"] == list(net.sparse) and result["layers"] == len(read_net(saved["path"]).nodes)
    assert result["output_shape"] == list(saved["want"].shape) and result["threads"] == 1 and result["reps"] >= 3
    assert 0 < result["us_min"] <= result["us_median"] and result["load_us"] > 0
    assert result["xnnpack"].startswith("executorch-")
    assert (result["xnnpack_sparse"] is None) == (not net.sparse)
    got = np.fromfile(engine_runs["root"] / f"{name}.output.f32", "<f4")
    assert np.array_equal(np.fromfile(engine_runs["root"] / f"{name}.input.f32", "<f4"), saved["x"].ravel())
    assert np.abs(got - saved["want"].ravel()).max() < 1e-4
    assert result["max_abs_error"] < 1e-4


def test_conversions_follow_the_layout_plan(engine_runs):
    conversions = {name: r["conversions"] for name, r in engine_runs["results"].items()}
    # NCHW input -> NHWC for the dense stem, NHWC -> NCHW for the sparse 1x1; pooled [1, C, 1, 1] needs none.
    assert conversions["sparse_1x1_d0.1"] == 2
    # Dense only: the delegate's two boundary conversions (input in, output out).
    assert conversions["conv_relu"] == 2 and conversions["max_pool"] == 2
    # Sparse on the NCHW input, NCHW out: nothing to convert.
    assert conversions["sparse_3x3_im2col"] == 0
    # The add runs in its first operand's layout (NCHW, sparse) and converts the NHWC stem once; output NCHW.
    assert conversions["residual_add"] == 3
    # A depthwise convolution between sparse ones stays NCHW.
    assert conversions["nchw_chain"] == 0


def test_threads_follow_the_line_and_default_to_executorchs(binary, engine_runs):
    path = engine_runs["nets"]["residual_add"][1]["path"]
    header, results = run(binary, [{"id": "t2", "net": path, "threads": 2}, {"id": "t0", "net": path, "threads": 0}])
    assert header["net_format_version"] == 1
    assert [r["threads"] for r in results] == [2, header["default_threads"]]
    assert all(r["max_abs_error"] < 1e-4 for r in results)


def damaged_files(good: Path, root: Path) -> dict[str, tuple[Path, str]]:
    data = bytearray(good.read_bytes())
    flipped = bytearray(data)
    flipped[-5] ^= 0x10
    versioned = bytearray(data)
    versioned[8:12] = (2).to_bytes(4, "little")
    header = bytearray(data)
    header[16] = ord("[")
    cases = {"bit_flip": (flipped, "CRC-32"), "truncated": (data[:-40], "truncated"),
             "extended": (data + b"\0" * 64, "extended"),
             "version": (versioned, "version 2; this engine reads version 1"),
             "magic": (b"PK" + data[2:], "not a jcw network file"),
             "header": (header, "not JSON")}
    files = {}
    for name, (blob, words) in cases.items():
        (root / f"{name}.jcwnet").write_bytes(bytes(blob))
        files[name] = (root / f"{name}.jcwnet", words)
    return files


def test_damaged_files_are_one_sentence_and_the_next_line_runs(binary, engine_runs, tmp_path):
    good = Path(engine_runs["nets"]["nchw_chain"][1]["path"])
    files = damaged_files(good, tmp_path)
    lines = []
    for name, (path, _) in files.items():
        lines += [{"id": name, "net": str(path)}, {"id": f"after_{name}", "net": str(good), "threads": 1}]
    lines += [{"id": "missing", "net": str(tmp_path / "absent.jcwnet")},
              {"id": "both", "net": str(good), "pte": str(good)},
              {"id": "input_file", "net": str(good), "input_file": str(good)}]
    _, results = run(binary, lines)
    by_id = {r["id"]: r for r in results}
    assert [r["id"] for r in results] == [line["id"] for line in lines]
    for name, (path, words) in files.items():
        message = by_id[name]["error"]
        assert words in message and str(path) in message and "\n" not in message and len(message) < 300, message
        assert "error" not in by_id[f"after_{name}"]
        with pytest.raises(NetFileError):  # the kit's own reader refuses the same file
            read_net(path)
    assert "No such file" in by_id["missing"]["error"] and "not both" in by_id["both"]["error"]
    assert "check input" in by_id["input_file"]["error"]


def test_unrunnable_files_are_refused_with_one_sentence(binary, tmp_path):
    torch.manual_seed(3)
    net = SparsePointwise(0.5)
    g = Graph()
    net.graph(g)
    x = np.zeros((1, 3, 12, 12), "f4")
    common = {"input_name": "x", "input_shape": [1, 3, 12, 12], "output": "y", "check_input": x,
              "check_output": np.zeros((1, 10), "f4"), "validate": False}
    zero = {**g.tensors, "expand.weight": np.zeros_like(g.tensors["expand.weight"])}
    write_net(tmp_path / "density0.jcwnet", name="d0", nodes=g.nodes, tensors=zero, **common)
    unknown = [dict(node) for node in g.nodes]
    unknown.insert(2, {"op": "hardswish", "name": "act", "input": "b", "output": "b2"})
    unknown[3]["input"] = "b2"
    write_net(tmp_path / "unknown.jcwnet", name="u", nodes=unknown, tensors=g.tensors, **common)
    depthwise = Depthwise()
    gd = Graph()
    depthwise.graph(gd)
    gd.nodes[1]["sparse"] = True
    write_net(tmp_path / "sparse_dw.jcwnet", name="s", nodes=gd.nodes, tensors=gd.tensors,
              **{**common, "output": "y", "check_output": np.zeros((1, 8, 6, 6), "f4")})
    wrong = save(ConvRelu(), tmp_path / "good.jcwnet")
    write_net(tmp_path / "wrong_check.jcwnet", name="w", nodes=read_net(wrong["path"]).nodes,
              tensors={k: v for k, v in read_net(wrong["path"]).tensors.items() if not k.startswith("check.")},
              input_name="x", input_shape=[1, 3, 12, 12], output="y", check_input=wrong["x"],
              check_output=wrong["want"] + 0.5)
    names = ["density0", "unknown", "sparse_dw", "wrong_check"]
    _, results = run(binary, [{"id": n, "net": str(tmp_path / f"{n}.jcwnet")} for n in names]
                     + [{"id": "good", "net": wrong["path"]}])
    errors = {r["id"]: r.get("error") for r in results}
    assert "sparse layer expand at density 0" in errors["density0"]
    assert "layer the engine cannot run: act (op 'hardswish')" in errors["unknown"]
    assert "sparse depthwise convolution 'dw'" in errors["sparse_dw"]
    assert "differs from the file's check output" in errors["wrong_check"]
    assert errors["good"] is None and all("\n" not in errors[n] for n in names)


class SparseStack(nn.Module):
    def __init__(self, density: float, width: int = 256, depth: int = 3):
        super().__init__()
        self.convs = nn.ModuleList(prune(nn.Conv2d(width, width, 1), density, seed=i) for i in range(depth))

    def forward(self, x):
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x


def test_the_sparse_kernel_pays_off_at_low_density(binary, tmp_path):
    """Coarse and robust: at 5% density the same stack of 1x1 convolutions, run sparse, takes well under
    half the time it takes at 100% density run sparse (the kernel skips what is zero)."""
    lines = []
    for density in (0.05, 1.0):
        torch.manual_seed(4)
        stack = SparseStack(density).eval()
        g = Graph()
        source = "x"
        for i, conv in enumerate(stack.convs):
            g.conv(f"c{i}", conv, source, f"v{i}", "relu", sparse=True)
            source = f"v{i}"
        x = torch.rand(1, 256, 28, 28) - 0.5
        with torch.no_grad():
            want = stack(x)
        path = tmp_path / f"d{density}.jcwnet"
        write_net(path, name="stack", input_name="x", input_shape=[1, 256, 28, 28], output=source, nodes=g.nodes,
                  tensors=g.tensors, check_input=x.numpy(), check_output=want.numpy())
        lines.append({"id": str(density), "net": str(path), "threads": 1})
    _, results = run(binary, lines, ["--warmup", "1", "--min-reps", "5", "--min-time-ms", "0"])
    low, full = (r["us_min"] for r in results)
    assert all(r["sparse_layers"] == ["c0", "c1", "c2"] for r in results)
    assert low < 0.5 * full, (low, full)


@pytest.mark.slow
def test_arm64_bundle_runs_a_network_under_qemu_to_torchs_output(tmp_path):
    bundle = arm64_bundle()
    torch.manual_seed(6)
    net = NchwChain()
    saved = save(net, tmp_path / "chain.jcwnet", shape=(1, 3, 8, 8))
    # segments: this chain also qualifies for XNNPACK's own sparse inference (tests/test_xnnpack_cluster.py),
    # which the engine would take by default on arm64; here the engine's NCHW segments are what is tested
    lines = [{"id": "chain", "net": saved["path"], "threads": 1, "sparse_path": "segments"},
             {"id": "magic", "net": str(tmp_path / "x.jcwnet")}]
    (tmp_path / "x.jcwnet").write_bytes(b"not a network file at all")
    done = subprocess.run(["sh", str(bundle / runner.PTEBENCH_LAUNCHER), "--warmup", "0", "--min-reps", "2",
                           "--min-time-ms", "0", "--dump", str(tmp_path)],
                          input="".join(json.dumps(line) + "\n" for line in lines).encode(),
                          env={**os.environ, "CONVBENCH_EMULATOR": runner.QEMU_AARCH64}, cwd=tmp_path,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    out = [json.loads(line) for line in done.stdout.decode().splitlines()]
    header, (chain, magic) = out[0]["runner"], out[1:]
    assert header["arch"] == "aarch64" and header["net_format_version"] == 1
    assert chain["sparse_layers"] == ["stem", "pw"] and chain["conversions"] == 0, chain
    assert chain["xnnpack_sparse"] == chain["xnnpack"]  # the arm64 wheel runs its own SpMM
    got = np.fromfile(tmp_path / "chain.output.f32", "<f4")
    assert np.abs(got - saved["want"].ravel()).max() < 1e-4
    assert "not a jcw network file" in magic["error"]
