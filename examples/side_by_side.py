#!/usr/bin/env python3
"""wgcnn and PyTorch training throughput side by side, in one table from one run
on this machine.

Runs `wgcnn bench train --json` and then the same models, initialisation,
optimizer and batch sizes in PyTorch (examples/pytorch/pytorch_reference.py),
and prints images/s for both and their ratio. On a shared or throttling
machine the speed moves from minute to minute; `--rounds N` alternates the
two N times per model and batch size (wgcnn first in odd rounds, PyTorch
first in even ones) and prints the median of each and the median ratio of
the rounds, each ratio taken from figures measured minutes apart at most.

    python3 examples/side_by_side.py                                  # wgcnn's default adapter vs PyTorch CPU
    python3 examples/side_by_side.py --wgcnn-cpu                      # wgcnn's CPU path vs PyTorch CPU
    python3 examples/side_by_side.py --wgcnn-device 0 --torch-device cuda --batch-size 256
    python3 examples/side_by_side.py --wgcnn-device 0 --model lenet5 --batch-size 64 --rounds 10
    python3 examples/side_by_side.py --wgcnn-device 0 --batch-size 64 --rounds 6 \
        --burn examples/burn_reference/target/release/wgcnn-burn-reference

Needs a release build (`cargo build --release`, or --wgcnn PATH) and, for the
PyTorch column, `pip install torch`; `--burn PATH` compares with Burn's wgpu
backend instead (LeNet-5 only; build examples/burn_reference first).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def wgcnn_rates(args, models, batch_sizes):
    """`(model, batch) -> (images/s, device)` from `wgcnn bench train --json`."""
    cmd = [args.wgcnn, "bench", "train", "--json", "--runs", str(args.runs)]
    for model in models:
        cmd += ["--model", model]
    for batch in batch_sizes:
        cmd += ["--batch-size", str(batch)]
    if args.wgcnn_cpu:
        cmd.append("--cpu")
    elif args.wgcnn_device is not None:
        cmd += ["--device", str(args.wgcnn_device)]
    return {(r["model"], r["batch_size"]): (r["images_per_second"], r["device"])
            for r in train_records(cmd)}


def json_records(cmd):
    """The JSON lines `cmd` prints, or exit with its error."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        sys.exit(f"cannot run {cmd[0]}: {e.strerror}")
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr.strip()}")
    return [json.loads(line) for line in out.stdout.splitlines()]


def train_records(cmd):
    """The `"kind": "train"` JSON lines `cmd` prints, or exit with its error."""
    return [r for r in json_records(cmd) if r.get("kind") == "train"]


class Torch:
    """The PyTorch reference (examples/pytorch/pytorch_reference.py), run in
    this process."""
    name = "PyTorch"

    def __init__(self, args):
        sys.path.insert(0, os.path.join(HERE, "pytorch"))
        import pytorch_reference
        self.reference = pytorch_reference
        self.args = args

    def rates(self, models, batch_sizes):
        """`(model, batch) -> images/s`."""
        return {(model, batch): self.reference.images_per_second(
                    model, batch, self.args.torch_device, self.args.runs)
                for model in models for batch in batch_sizes}

    def description(self):
        torch = self.reference.torch
        device = (self.args.torch_device if self.args.torch_device == "cpu"
                  else torch.cuda.get_device_name())
        return f"PyTorch {torch.__version__} on {device} ({torch.get_num_threads()} threads)"


class Burn:
    """The Burn reference binary (examples/burn_reference, LeNet-5 only)."""
    name = "Burn"

    def __init__(self, args):
        if not os.access(args.burn, os.X_OK):
            sys.exit(f"no Burn reference binary at {args.burn}: build examples/burn_reference "
                     "(see its README)")
        unknown = set(args.models) - {"lenet5"}
        if unknown:
            sys.exit(f"the Burn reference trains lenet5 only, not {', '.join(sorted(unknown))}")
        self.args = args
        self.device = None

    def rates(self, models, batch_sizes):
        cmd = [self.args.burn, "--json", "--runs", str(self.args.runs)]
        for batch in batch_sizes:
            cmd += ["--batch-size", str(batch)]
        rates = {}
        for record in train_records(cmd):
            rates[(record["model"], record["batch_size"])] = record["images_per_second"]
            self.device = record["device"]
        return rates

    def description(self):
        return f"Burn 0.22.1, {self.device or 'wgpu'}"


def other_side(args):
    """What wgcnn is compared with, or None (with a word why) without it."""
    if args.burn:
        return Burn(args)
    try:
        return Torch(args)
    except ImportError as e:
        print(f"(no PyTorch column: {e})", file=sys.stderr)
        return None


def alternated(args, other):
    """`--rounds` rounds per model and batch size, the two sides taking turns
    to go first: `(model, batch) -> ([wgcnn images/s], [other images/s],
    device)`, one entry per round."""
    results = {}
    for model in args.models:
        for batch in args.batch_sizes:
            ours, theirs, device = [], [], None
            for round_ in range(args.rounds):
                def run_ours():
                    nonlocal device
                    rate, device = wgcnn_rates(args, [model], [batch])[(model, batch)]
                    ours.append(rate)

                def run_theirs():
                    theirs.append(other.rates([model], [batch])[(model, batch)])

                turns = (run_ours, run_theirs) if round_ % 2 == 0 else (run_theirs, run_ours)
                for turn in turns:
                    turn()
                ratios = " ".join(f"{a / b:.2f}" for a, b in zip(ours, theirs))
                print(f"\r{model} {batch}: round {round_ + 1}/{args.rounds}, ratios {ratios}",
                      end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
            results[(model, batch)] = (ours, theirs, device)
    return results


def print_rounds(args, results, other):
    devices = sorted({device for _, _, device in results.values()})
    print(f"wgcnn:   {', '.join(devices)}")
    print(f"{other.name + ':':<8} {other.description()}")
    print(f"{args.rounds} rounds, alternating; medians, and the median and range of the rounds' ratios\n")
    column = f"{other.name} img/s"
    print(f"{'model':<12} {'batch':>6} {'wgcnn img/s':>12} {column:>14} {'ratio':>7} {'range':>12}")
    for model in args.models:
        for batch in args.batch_sizes:
            ours, theirs, _ = results[(model, batch)]
            ratios = [a / b for a, b in zip(ours, theirs)]
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
            print(f"{model:<12} {batch:>6} {statistics.median(ours):>12,.0f} "
                  f"{statistics.median(theirs):>14,.0f} {statistics.median(ratios):>7.2f} {spread:>12}")


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
    parser.add_argument("--burn", metavar="PATH",
                        help="compare with this build of examples/burn_reference instead of "
                             "PyTorch (LeNet-5 only)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per figure (median)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate wgcnn and the other side this many times per model and "
                             "batch size")
    args = parser.parse_args()
    args.models = args.models or (["lenet5"] if args.burn else ["lenet5", "fashion-cnn", "cifar-cnn"])
    args.batch_sizes = args.batch_sizes or [64, 128]
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    other = other_side(args)
    if args.rounds > 1:
        if other is None:
            sys.exit("--rounds compares with PyTorch, which is not installed")
        print_rounds(args, alternated(args, other), other)
        return
    ours = wgcnn_rates(args, args.models, args.batch_sizes)
    theirs = other.rates(args.models, args.batch_sizes) if other else None
    name = other.name if other else "PyTorch"
    devices = sorted({device for _, device in ours.values()})
    print(f"wgcnn:   {', '.join(devices)}")
    print(f"{name + ':':<8} {other.description() if other else '-'}\n")
    column = f"{name} img/s"
    print(f"{'model':<12} {'batch':>6} {'wgcnn img/s':>12} {column:>14} {'ratio':>7}")
    for model in args.models:
        for batch in args.batch_sizes:
            rate = ours.get((model, batch), (None, None))[0]
            value = theirs.get((model, batch)) if theirs else None
            cell = lambda v: f"{v:,.0f}" if v is not None else "-"
            ratio = f"{rate / value:.2f}" if rate and value else "-"
            print(f"{model:<12} {batch:>6} {cell(rate):>12} {cell(value):>14} {ratio:>7}")


if __name__ == "__main__":
    main()
