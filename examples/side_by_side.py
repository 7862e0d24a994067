#!/usr/bin/env python3
"""wgcnn and PyTorch training throughput side by side, in one table from one run
on this machine.

Runs `wgcnn bench train --json` and then the same models, initialisation,
optimizer and batch sizes in PyTorch (examples/pytorch/pytorch_reference.py),
and prints images/s for both and their ratio.

    python3 examples/side_by_side.py                                  # wgcnn's default adapter vs PyTorch CPU
    python3 examples/side_by_side.py --wgcnn-cpu                      # wgcnn's CPU path vs PyTorch CPU
    python3 examples/side_by_side.py --wgcnn-device 0 --torch-device cuda --batch-size 256

Needs a release build (`cargo build --release`, or --wgcnn PATH) and, for the
PyTorch column, `pip install torch`.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def wgcnn_rates(args):
    """`(model, batch) -> (images/s, device)` from `wgcnn bench train --json`."""
    cmd = [args.wgcnn, "bench", "train", "--json", "--runs", str(args.runs)]
    for model in args.models:
        cmd += ["--model", model]
    for batch in args.batch_sizes:
        cmd += ["--batch-size", str(batch)]
    if args.wgcnn_cpu:
        cmd.append("--cpu")
    elif args.wgcnn_device is not None:
        cmd += ["--device", str(args.wgcnn_device)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr.strip()}")
    rates = {}
    for line in out.stdout.splitlines():
        record = json.loads(line)
        if record.get("kind") == "train":
            key = (record["model"], record["batch_size"])
            rates[key] = (record["images_per_second"], record["device"])
    return rates


def torch_rates(args):
    """`(model, batch) -> images/s` from the PyTorch reference, or None without torch."""
    sys.path.insert(0, os.path.join(HERE, "pytorch"))
    try:
        import pytorch_reference
    except ImportError as e:
        print(f"(no PyTorch column: {e})", file=sys.stderr)
        return None, None
    rates = {}
    for model in args.models:
        for batch in args.batch_sizes:
            rates[(model, batch)] = pytorch_reference.images_per_second(
                model, batch, args.torch_device, args.runs)
    torch = pytorch_reference.torch
    device = (args.torch_device if args.torch_device == "cpu"
              else torch.cuda.get_device_name())
    return rates, f"PyTorch {torch.__version__} on {device} ({torch.get_num_threads()} threads)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", dest="models", action="append",
                        choices=["lenet5", "fashion-cnn", "cifar-cnn"])
    parser.add_argument("--batch-size", dest="batch_sizes", action="append", type=int)
    parser.add_argument("--wgcnn", default=os.path.join(HERE, "..", "target", "release", "wgcnn"),
                        help="the wgcnn binary (default: this checkout's release build)")
    parser.add_argument("--wgcnn-device", type=int, help="wgcnn adapter index (`wgcnn devices`)")
    parser.add_argument("--wgcnn-cpu", action="store_true", help="wgcnn's CPU path")
    parser.add_argument("--torch-device", default="cpu", help="cpu or cuda")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per figure (median)")
    args = parser.parse_args()
    args.models = args.models or ["lenet5", "fashion-cnn", "cifar-cnn"]
    args.batch_sizes = args.batch_sizes or [64, 128]

    ours = wgcnn_rates(args)
    theirs, torch_device = torch_rates(args)
    devices = sorted({device for _, device in ours.values()})
    print(f"wgcnn:   {', '.join(devices)}")
    print(f"PyTorch: {torch_device or '-'}\n")
    print(f"{'model':<12} {'batch':>6} {'wgcnn img/s':>12} {'PyTorch img/s':>14} {'ratio':>7}")
    for model in args.models:
        for batch in args.batch_sizes:
            rate = ours.get((model, batch), (None, None))[0]
            other = theirs.get((model, batch)) if theirs else None
            cell = lambda v: f"{v:,.0f}" if v is not None else "-"
            ratio = f"{rate / other:.2f}" if rate and other else "-"
            print(f"{model:<12} {batch:>6} {cell(rate):>12} {cell(other):>14} {ratio:>7}")


if __name__ == "__main__":
    main()
