"""A small, real training job for the CPU: a two-layer MLP learns to separate three interleaved
spirals, with full-batch gradient descent in NumPy (NumPy comes with codecarbon's dependencies).

    carbonwatch run --name demo-mlp --kind training -- python examples/train_mlp.py --epochs 30
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def spirals(
    n_per_class: int, classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for c in range(classes):
        r = np.linspace(0.05, 1.0, n_per_class)
        theta = np.linspace(c * 4.0, (c + 1) * 4.0, n_per_class) + rng.normal(0, 0.2, n_per_class)
        xs.append(np.column_stack([r * np.sin(theta), r * np.cos(theta)]))
        ys.append(np.full(n_per_class, c))
    return np.concatenate(xs), np.concatenate(ys)


def train(epochs: int, hidden: int, steps_per_epoch: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    x, y = spirals(2000, 3, rng)
    w1 = rng.normal(0, 1.0, (2, hidden)) / np.sqrt(2)
    b1 = np.zeros(hidden)
    w2 = rng.normal(0, 1.0, (hidden, 3)) / np.sqrt(hidden)
    b2 = np.zeros(3)
    lr = 0.5
    onehot = np.eye(3)[y]
    accuracy = 0.0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        for _ in range(steps_per_epoch):
            h = np.maximum(0, x @ w1 + b1)
            logits = h @ w2 + b2
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            loss = -np.mean(np.log(p[np.arange(len(y)), y] + 1e-12))
            d_logits = (p - onehot) / len(y)
            d_w2 = h.T @ d_logits
            d_h = d_logits @ w2.T
            d_h[h <= 0] = 0
            d_w1 = x.T @ d_h
            w2 -= lr * d_w2
            b2 -= lr * d_logits.sum(axis=0)
            w1 -= lr * d_w1
            b1 -= lr * d_h.sum(axis=0)
        accuracy = float(np.mean(np.argmax(p, axis=1) == y))
        print(f"epoch {epoch + 1:3d}/{epochs}  loss {loss:.4f}  accuracy {accuracy:.3f}  "
              f"({time.perf_counter() - t0:.2f} s)", flush=True)
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    accuracy = train(args.epochs, args.hidden, args.steps_per_epoch, args.seed)
    print(f"final training accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
