#!/usr/bin/env python3
"""Training throughput of wgcnn's built-in models in PyTorch, for a side-by-side
comparison with `wgcnn bench train` on the same machine.

Same layers, He (Kaiming normal) initialisation, SGD with momentum 0.9, random
inputs and labels, fp32; each figure is the median of several timed runs after
a warm-up, with the device synchronised before the clock stops.

    python3 examples/pytorch/pytorch_reference.py                 # CPU, all models
    python3 examples/pytorch/pytorch_reference.py --device cuda   # a CUDA GPU
    python3 examples/pytorch/pytorch_reference.py --model lenet5 --batch-size 64 --json

Needs `pip install torch`.
"""
import argparse
import json
import statistics
import time

import torch
from torch import nn


def lenet5(channels, size, classes):
    flat = 16 * ((size // 2 - 4) // 2) ** 2
    return nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, classes))


def conv_block(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


def fashion_cnn(channels, size, classes):
    flat = 64 * (size // 4) ** 2
    return nn.Sequential(
        *conv_block(channels, 32), *conv_block(32, 32), nn.MaxPool2d(2),
        *conv_block(32, 64), *conv_block(64, 64), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(flat, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, classes))


def cifar_cnn(channels, size, classes):
    flat = 64 * (size // 4) ** 2
    return nn.Sequential(
        *conv_block(channels, 32), *conv_block(32, 32), nn.MaxPool2d(2),
        *conv_block(32, 64), *conv_block(64, 64), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(flat, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, classes))


MODELS = {
    "lenet5": (lenet5, 1, 28),
    "fashion-cnn": (fashion_cnn, 1, 28),
    "cifar-cnn": (cifar_cnn, 3, 32),
}


def he_init(model):
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def images_per_second(name, batch, device, runs):
    build, channels, size = MODELS[name]
    torch.manual_seed(1)
    model = build(channels, size, 10).to(device)
    he_init(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(batch, channels, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    steps = max(1, min(50, round(2.0 / (time.perf_counter() - start))))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        times.append(time.perf_counter() - start)
    return steps * batch / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", choices=sorted(MODELS))
    parser.add_argument("--batch-size", action="append", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    models = args.model or ["lenet5", "fashion-cnn", "cifar-cnn"]
    batches = args.batch_size or [64, 128, 256]
    device_name = args.device if args.device == "cpu" else torch.cuda.get_device_name()
    label = f"PyTorch {torch.__version__} on {device_name} ({torch.get_num_threads()} threads)"
    if not args.json:
        print(f"device: {label}\n\n{'train model':<14} {'batch':>6} {'images/s':>12}")
    for name in models:
        for batch in batches:
            rate = images_per_second(name, batch, args.device, args.runs)
            if args.json:
                print(json.dumps({"kind": "train", "model": name, "batch_size": batch,
                                  "device": label, "images_per_second": rate}))
            else:
                print(f"{name:<14} {batch:>6} {rate:>12.1f}")


if __name__ == "__main__":
    main()
