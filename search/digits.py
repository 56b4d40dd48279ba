"""The digits task (scikit-learn's bundled 8x8 handwritten digits): data splits, a seeded training
routine for the zoo's DigitsCNN, and the real accuracy evaluator built on them."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .genome import SearchSpace
from .objectives import EvaluatorAccuracy


def load_splits(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """train / val / test splits (55/25/20), images scaled to [0, 1], shape (n, 1, 8, 8); "calib" is the
    first 256 training images, used to re-estimate batch-norm statistics after pruning.

    The validation split (the search's objective) is kept large so that selecting among many
    candidates on it does not simply pick the luckiest few images."""
    from sklearn.datasets import load_digits
    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
    x, y = x[order], y[order]
    n = len(y)
    cuts = [0, int(0.55 * n), int(0.8 * n), n]
    splits = {name: (x[a:b], y[a:b]) for name, a, b in zip(("train", "val", "test"), cuts[:-1], cuts[1:])}
    splits["calib"] = (splits["train"][0][:256], splits["train"][1][:256])
    return splits


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 30, lr: float = 0.05,
          batch_size: int = 64, seed: int = 0) -> nn.Module:
    """Plain SGD with momentum and cosine decay; deterministic for a given seed."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    steps = epochs * ((len(y) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=generator).split(batch_size):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


def evaluator(model: nn.Module, space: SearchSpace, splits, finetune_steps: int = 0, seed: int = 0,
              split: str = "val") -> EvaluatorAccuracy:
    """Real accuracy on a held-out split after pruning, BN recalibration and optional fine-tuning."""
    return EvaluatorAccuracy(model, space, splits["calib"][0], *splits[split], finetune_steps=finetune_steps,
                             train_inputs=splits["train"][0], train_targets=splits["train"][1], seed=seed)
