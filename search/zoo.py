"""Built-in model zoo for the search: ResNet-18/50, MobileNetV1/V2 at 224x224 and a small digits CNN.

The real networks are torch modules built from the profiler's architecture tables and names
(`profiler.networks`, the one source); no torchvision, no downloads. Weights are randomly initialised
from a seed, so a zoo name plus a seed always rebuilds the same network (needed by `jcw export`).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from jcw.profiler import networks

from .errors import SearchError


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, name: str, num_classes: int = networks.NUM_CLASSES) -> None:
        super().__init__()
        layers, bottleneck = networks.RESNET_BLOCKS[name]
        block = Bottleneck if bottleneck else BasicBlock
        cin = networks.RESNET_STEM
        self.conv1 = nn.Conv2d(networks.INPUT_CHANNELS, cin, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = []
        for index, (planes, blocks) in enumerate(zip(networks.RESNET_STAGE_WIDTHS, layers)):
            stride = 1 if index == 0 else 2
            stage = []
            for b in range(blocks):
                stage.append(block(cin, planes, stride if b == 0 else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: type = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act(inplace=True))


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int = networks.NUM_CLASSES) -> None:
        super().__init__()
        cin = networks.MOBILENET_STEM
        layers = [_conv_bn(networks.INPUT_CHANNELS, cin, 3, 2)]
        for cout, stride in networks.MOBILENET_V1_BLOCKS:
            layers += [_conv_bn(cin, cin, 3, stride, groups=cin), _conv_bn(cin, cout, 1, 1)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1, 1, act=nn.ReLU6)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = networks.NUM_CLASSES) -> None:
        super().__init__()
        cin, last = networks.MOBILENET_STEM, networks.MOBILENET_V2_LAST
        layers = [_conv_bn(networks.INPUT_CHANNELS, cin, 3, 2, act=nn.ReLU6)]
        for expand, cout, repeats, stride in networks.MOBILENET_V2_STAGES:
            for r in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if r == 0 else 1, expand))
                cin = cout
        layers.append(_conv_bn(cin, last, 1, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class DigitsCNN(nn.Module):
    """Small CNN for scikit-learn's 8x8 digits, mobile-style: 3x3 and pointwise convs, one strided."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, 2, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.conv4 = nn.Conv2d(2 * width, 4 * width, 1, bias=False)
        self.bn4 = nn.BatchNorm2d(4 * width)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.relu(self.bn4(self.conv4(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


_REAL_INPUT = (1, networks.INPUT_CHANNELS, networks.INPUT_SIZE, networks.INPUT_SIZE)
#: The real networks under the profiler's names (networks.NETWORKS), then the digits CNN.
ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "resnet18": (lambda: ResNet("resnet18"), _REAL_INPUT),
    "resnet50": (lambda: ResNet("resnet50"), _REAL_INPUT),
    "mobilenet_v1": (MobileNetV1, _REAL_INPUT),
    "mobilenet_v2": (MobileNetV2, _REAL_INPUT),
    "digits": (DigitsCNN, (1, 1, 8, 8)),
}


def canonical_name(name: str) -> str:
    """A zoo name as the zoo spells it: an alias users type (mobilenetv1) becomes its name."""
    return networks.canonical_name(name)


def is_zoo_model(name: str) -> bool:
    return canonical_name(name) in ZOO


def build(name: str, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    """A zoo model (its name or an alias) in eval mode (weights drawn from `seed`) and its default input shape."""
    name = canonical_name(name)
    if name not in ZOO:
        raise SearchError(f"unknown model {name!r}; choose one of {', '.join(ZOO)} or give module:function")
    factory, shape = ZOO[name]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = factory()
    return model.eval(), shape


def load_callable(spec: str, what: str) -> Callable:
    """`package.module:function` -> the function; one-sentence SearchError if it cannot be found."""
    import importlib
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SearchError(f"{what} must be a name or module:function, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SearchError(f"cannot import module {module_name!r} for the {what} ({exc})") from None
    except Exception as exc:  # the user's module failed while importing
        raise SearchError(f"importing module {module_name!r} for the {what} failed: {user_failure(exc)}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise SearchError(f"module {module_name!r} has no function {attr!r} for the {what}")
    return fn


def user_failure(exc: BaseException) -> str:
    """An exception raised by the user's own code, as one line: its type and its message."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or any(v < 1 for v in shape):
        raise SearchError(f"--input-shape must be four positive integers like 1,3,224,224, got {text!r}")
    return shape


def resolve(spec: str, input_shape: tuple[int, ...] | None = None, seed: int = 0) -> tuple[nn.Module, tuple]:
    """A zoo name or `module:function` (returning an nn.Module) -> (model in eval mode, input shape)."""
    if ":" not in spec:
        model, shape = build(spec, seed)
        return model, tuple(input_shape or shape)
    if input_shape is None:
        raise SearchError(f"model {spec} needs --input-shape (e.g. 1,3,224,224)")
    factory = load_callable(spec, "model")
    try:
        model = factory()
    except Exception as exc:
        raise SearchError(f"model function {spec} raised {user_failure(exc)}") from None
    if not isinstance(model, nn.Module):
        raise SearchError(f"model function {spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval(), tuple(input_shape)
