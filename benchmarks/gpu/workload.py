"""GPU workloads for benchmarks/gpu_check.py (PyTorch, CUDA): a training loop or an inference
server loop, for a fixed time. The inference loop is decorated with carbonwatch.track_inference,
so with a daemon running every call is reported as a span.

    python benchmarks/gpu/workload.py train --seconds 10
    python benchmarks/gpu/workload.py infer --seconds 10 --model mlp-4096
"""

from __future__ import annotations

import argparse
import random
import time


def train(seconds: float, width: int) -> None:
    import torch

    model = torch.nn.Sequential(
        torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, width)
    ).cuda().to(torch.bfloat16)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(4096, width, device="cuda", dtype=torch.bfloat16)
    end = time.time() + seconds
    steps = 0
    while time.time() < end:
        opt.zero_grad()
        loss = model(x).float().pow(2).mean()
        loss.backward()
        opt.step()
        steps += 1
        if steps % 20 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    print(f"train: {steps} steps", flush=True)


def infer(seconds: float, width: int, model_name: str) -> None:
    import torch

    import carbonwatch

    model = torch.nn.Sequential(
        torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, width)
    ).cuda().to(torch.bfloat16).eval()
    batches = [1, 8, 64, 256, 1024]
    inputs = {b: torch.randn(b, width, device="cuda", dtype=torch.bfloat16) for b in batches}
    calls = 0
    end = time.time() + seconds
    with torch.no_grad():
        while time.time() < end:
            batch = random.choice(batches)
            with carbonwatch.inference(model_name, batch=str(batch)):
                model(inputs[batch])
                torch.cuda.synchronize()  # the span covers the GPU work, not just the launch
            calls += 1
            time.sleep(random.expovariate(1 / 0.005))
    print(f"infer: {calls} calls", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["train", "infer"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=0)
    parser.add_argument("--model", default="mlp-4096")
    args = parser.parse_args()
    if args.role == "train":
        train(args.seconds, args.width or 8192)
    else:
        infer(args.seconds, args.width or 4096, args.model)


if __name__ == "__main__":
    main()
