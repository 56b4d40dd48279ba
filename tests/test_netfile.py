"""The jcw network file (profiler.netfile, android_harness/native/NETFILE.md): the round trip, and every
refusal of the contract as one sentence naming the file — from Python and through `jcw measure --net`."""
import json
import struct
import zlib

import numpy as np
import pytest

from jcw.__main__ import main
from jcw.profiler import netfile
from jcw.profiler.netfile import NetFileError, read_net, write_net
from net_reference import run_network

RNG = np.random.default_rng(0)
STEM_W = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)
DW_W = RNG.standard_normal((8, 1, 3, 3)).astype(np.float32)
PW_W = (RNG.standard_normal((8, 8, 1, 1)) * (RNG.random((8, 8, 1, 1)) < 0.3)).astype(np.float32)
FC_W = RNG.standard_normal((5, 8)).astype(np.float32)
X = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)


def _conv(name, src, cin, cout, k, stride, groups, sparse, activation="relu", bias=True):
    return {"op": "conv2d", "name": name, "input": src, "output": name, "cin": cin, "cout": cout, "k": k,
            "stride": stride, "pad": k // 2, "groups": groups, "weight": f"{name}.w",
            "bias": f"{name}.b" if bias else None, "activation": activation, "sparse": sparse}


def _network(**changes):
    """A small MobileNet-like network: stem, depthwise, sparse pointwise with a residual, pool, classifier."""
    nodes = [_conv("stem", "x", 3, 8, 3, 2, 1, False),
             _conv("dw", "stem", 8, 8, 3, 1, 8, False, "relu6"),
             _conv("pw", "dw", 8, 8, 1, 1, 1, True, "none", bias=False),
             {"op": "add", "name": "res", "inputs": ["pw", "stem"], "output": "res", "activation": "relu"},
             {"op": "max_pool2d", "name": "mp", "input": "res", "output": "mp", "k": 3, "stride": 1, "pad": 1},
             {"op": "global_avg_pool", "name": "gap", "input": "mp", "output": "gap"},
             {"op": "linear", "name": "fc", "input": "gap", "output": "logits", "cin": 8, "cout": 5,
              "weight": "fc.w", "bias": "fc.b"}]
    tensors = {"stem.w": STEM_W, "stem.b": np.arange(8, dtype=np.float32) / 10, "dw.w": DW_W,
               "dw.b": np.zeros(8, np.float32), "pw.w": PW_W, "fc.w": FC_W, "fc.b": np.ones(5, np.float32)}
    reference = run_network(nodes, tensors, "x", "logits", X).astype(np.float32)
    kwargs = {"name": "tiny", "input_name": "x", "input_shape": [1, 3, 8, 8], "output": "logits", "nodes": nodes,
              "tensors": tensors, "check_input": X, "check_output": reference}
    kwargs.update(changes)
    return kwargs


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "tiny.jcwnet"
    write_net(path, **_network())
    return path


def _parts(path):
    data = path.read_bytes()
    magic, version, length = netfile.PREAMBLE.unpack_from(data)
    header = json.loads(data[16:16 + length])
    start = 16 + length + (-(16 + length) % 64)
    return header, data[start:]


def _rewrite(path, header, payload, crc=True):
    """The file again with a changed header (and payload), its CRC recomputed unless told otherwise."""
    if crc:
        header = {**header, "payload_crc32": zlib.crc32(payload), "payload_bytes": len(payload)}
    text = json.dumps(header).encode()
    blob = netfile.PREAMBLE.pack(netfile.MAGIC, 1, len(text)) + text
    path.write_bytes(blob + b"\0" * (-len(blob) % 64) + payload)
    return path


def test_round_trip(good):
    net = read_net(good)
    kwargs = _network()
    assert net.name == "tiny" and net.input_name == "x" and net.input_shape == (1, 3, 8, 8)
    assert net.output == "logits" and net.output_shape == (1, 5) and net.sparse_layers == ["pw"]
    assert [n["op"] for n in net.nodes] == [n["op"] for n in kwargs["nodes"]]
    for key, value in kwargs["tensors"].items():
        assert net.tensors[key].dtype == np.float32 and np.array_equal(net.tensors[key], value)
    assert np.array_equal(net.check_input, X) and np.array_equal(net.check_output, kwargs["check_output"])
    assert net.tolerance == pytest.approx(1e-3) and net.shapes["mp"] == (1, 8, 4, 4)
    header, payload = _parts(good)
    assert all(entry["offset"] % 64 == 0 for entry in header["tensors"].values())
    assert header["payload_crc32"] == zlib.crc32(payload) and header["producer"].startswith("jcw")
    assert good.read_bytes()[:8] == b"JCWNET\0\0" and struct.unpack_from("<I", good.read_bytes(), 8) == (1,)
    # the file's own reference pair is what its graph computes
    assert np.allclose(run_network(net.nodes, net.tensors, "x", "logits", net.check_input), net.check_output,
                       atol=1e-5)


def _damage(path, case):
    data = bytearray(path.read_bytes())
    header, payload = _parts(path)
    if case == "truncated":
        path.write_bytes(data[:-7])
    elif case == "extended":
        path.write_bytes(data + b"\0" * 64)
    elif case == "bit flip":
        data[-len(payload) // 2] ^= 0x10
        path.write_bytes(data)
    elif case == "version":
        data[8:12] = struct.pack("<I", 2)
        path.write_bytes(data)
    elif case == "magic":
        data[:8] = b"PK\x03\x04\0\0\0\0"
        path.write_bytes(data)
    elif case == "not json":
        start = 16 + len(json.dumps(header, separators=(",", ":")).encode()) // 2
        data[start] = 0xFF
        path.write_bytes(data)
    elif case == "tensor outside":
        header["tensors"]["fc.w"]["offset"] = (len(payload) // 64 + 1) * 64
        _rewrite(path, header, payload)
    elif case == "shape product":
        header["tensors"]["fc.w"]["shape"] = [5, 9]
        _rewrite(path, header, payload)
    elif case == "missing field":
        del header["nodes"][0]["stride"]
        _rewrite(path, header, payload)
    elif case == "not ssa":
        header["nodes"][1]["output"] = "stem"
        _rewrite(path, header, payload)
    elif case == "nan":
        offset = header["tensors"]["fc.w"]["offset"]
        payload = payload[:offset] + np.float32(np.nan).tobytes() + payload[offset + 4:]
        _rewrite(path, header, payload)
    return path


@pytest.mark.parametrize("case, words", [
    ("truncated", ["is truncated"]),
    ("extended", ["is extended"]),
    ("bit flip", ["is damaged", "CRC-32"]),
    ("version", ["version 2; this engine reads version 1"]),
    ("magic", ["is not a jcw network file"]),
    ("not json", ["header that is not JSON"]),
    ("tensor outside", ["tensor 'fc.w'", "does not fit"]),
    ("shape product", ["'fc'", "weight has shape [5, 9], expected [5, 8]"]),
    ("missing field", ["'stem'", "without the field 'stride'"]),
    ("not ssa", ["'dw'", "output 'stem' is already defined"]),
    ("nan", ["tensor 'fc.w'", "not finite"]),
])
def test_a_damaged_or_foreign_file_is_one_sentence(good, case, words):
    _damage(good, case)
    with pytest.raises(NetFileError) as caught:
        read_net(good)
    message = str(caught.value)
    assert str(good) in message and "\n" not in message
    for word in words:
        assert word in message


def _write_unchecked(path, **changes):
    write_net(path, **_network(**changes), validate=False)
    return path


def _graph_case(case):
    kwargs = _network()
    nodes = [dict(n) for n in kwargs["nodes"]]
    tensors = dict(kwargs["tensors"])
    if case == "unknown op":
        nodes.insert(3, {"op": "softmax", "name": "attention", "input": "pw", "output": "attention"})
    elif case == "density 0":
        tensors["pw.w"] = np.zeros_like(PW_W)
    elif case == "sparse depthwise":
        nodes[1]["sparse"] = True
    elif case == "shapes":
        nodes[3]["inputs"] = ["pw", "x"]
    return {"nodes": nodes, "tensors": tensors}


GRAPH_CASES = [
    ("unknown op", ["has a layer the engine cannot run: attention (op 'softmax')"]),
    ("density 0", ["sparse layer pw at density 0"]),
    ("sparse depthwise", ["sparse depthwise convolution 'dw'"]),
    ("shapes", ["add 'res'", "differ in shape"]),
]


@pytest.mark.parametrize("case, words", GRAPH_CASES)
def test_a_graph_the_engine_cannot_run_is_one_sentence(tmp_path, case, words):
    path = _write_unchecked(tmp_path / "bad.jcwnet", **_graph_case(case))
    with pytest.raises(NetFileError) as caught:
        read_net(path)
    for word in words:
        assert word in str(caught.value)
    # the writer refuses the same network, and leaves no file behind
    with pytest.raises(NetFileError, match="cannot run|density 0|depthwise|differ"):
        write_net(tmp_path / "refused.jcwnet", **_network(**_graph_case(case)))
    assert not (tmp_path / "refused.jcwnet").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.jcwnet"]


def test_a_check_output_of_the_wrong_shape_is_refused(tmp_path):
    with pytest.raises(NetFileError, match=r"check output of shape \[1, 4\].*\[1, 5\]"):
        write_net(tmp_path / "a.jcwnet", **_network(check_output=np.zeros((1, 4), np.float32)))


def run_cli(capsys, *argv):
    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("case", ["bit flip", "version", "magic", "truncated", *[c for c, _ in GRAPH_CASES],
                                  "missing", "directory"])
def test_measure_net_refuses_a_bad_file_in_one_sentence(tmp_path, capsys, case):
    if case == "missing":
        path = tmp_path / "nothing.jcwnet"
    elif case == "directory":
        path = tmp_path
    elif case in dict(GRAPH_CASES):
        path = _write_unchecked(tmp_path / "bad.jcwnet", **_graph_case(case))
    else:
        path = tmp_path / "bad.jcwnet"
        write_net(path, **_network())
        _damage(path, case)
    # an address nothing answers at: the file is refused before any connection is tried
    status, out, err = run_cli(capsys, "measure", "--device", "tcp:192.0.2.1:9", "--net", str(path), "--json")
    assert status == 2 and out == "" and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jcw measure: ") and str(path) in lines[0], err
