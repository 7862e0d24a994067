#!/usr/bin/env python3
"""Load a wgcnn checkpoint into PyTorch, and check it predicts what wgcnn does.

A wgcnn checkpoint (`wgcnn train --checkpoint PATH`) is a safetensors file
whose tensors use the names and layouts of an equivalent `torch.nn.Sequential`
(`0.weight`, `1.running_var`, ...) and whose metadata holds the model
definition (`model`, TOML) and the training state (`training`, JSON: the
normalisation and the class names). This script

1. builds that `nn.Sequential` from the stored model definition, layer i of
   the definition becoming module "i" (so the state-dict names match);
2. loads the weights with `load_state_dict(strict=True)`, after dropping the
   optimizer state (`optimizer.*`), and switches to evaluation mode;
3. predicts test-set images, normalised as wgcnn does, and with `--compare`
   runs `wgcnn predict` on the same images and reports the largest
   probability difference and whether every predicted class agrees.

Layer mapping: conv2d -> Conv2d, linear -> Linear, batchnorm -> BatchNorm1d or
BatchNorm2d by the rank of its input, relu / leaky_relu / sigmoid / tanh,
dropout -> Dropout, maxpool2d -> MaxPool2d, avgpool2d -> AvgPool2d
(count_include_pad=True), flatten -> Flatten. wgcnn's linear layer flattens
its input itself; where a linear layer follows image-shaped activations, an
nn.Flatten (named "<i>_flatten", no parameters) goes in front of module "i".

Examples:

    python3 examples/pytorch/load_checkpoint.py fm.safetensors --count 100 --compare
    python3 examples/pytorch/load_checkpoint.py fm.safetensors --index 0 --index 7

Needs torch and safetensors (`pip install torch safetensors`), Python 3.11+.
In your own code:

    from load_checkpoint import load_model
    model, training = load_model("fm.safetensors")   # nn.Sequential, eval mode
"""

import argparse
import gzip
import json
import os
import pathlib
import shutil
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

REPO = pathlib.Path(__file__).resolve().parents[2]

# wgcnn's batchnorm: PyTorch's defaults.
BN_EPS, BN_MOMENTUM = 1e-5, 0.1


def window(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def build_sequential(model: dict) -> torch.nn.Sequential:
    """The torch.nn.Sequential equivalent to a wgcnn model definition (the
    parsed TOML: `input` and `layers`), with module names matching the
    checkpoint's tensor names."""
    nn = torch.nn
    shape = list(model["input"])  # per example: [C, H, W] or [D]
    modules = OrderedDict()
    for i, layer in enumerate(model["layers"]):
        kind = layer["type"]
        name = str(i)
        if kind == "conv2d":
            c, h, w = shape
            k, s, p = layer["kernel"], layer.get("stride", 1), layer.get("padding", 0)
            modules[name] = nn.Conv2d(c, layer["out_channels"], k, stride=s, padding=p)
            shape = [layer["out_channels"], window(h, k, s, p), window(w, k, s, p)]
        elif kind == "linear":
            if len(shape) > 1:
                modules[f"{i}_flatten"] = nn.Flatten()
            features = int(np.prod(shape))
            modules[name] = nn.Linear(features, layer["out_features"])
            shape = [layer["out_features"]]
        elif kind == "batchnorm":
            if len(shape) == 1:
                modules[name] = nn.BatchNorm1d(shape[0], eps=BN_EPS, momentum=BN_MOMENTUM)
            elif len(shape) == 3:
                modules[name] = nn.BatchNorm2d(shape[0], eps=BN_EPS, momentum=BN_MOMENTUM)
            else:
                raise ValueError(f"layer {i} (batchnorm): input shape {shape} is neither (D) nor (C, H, W)")
        elif kind == "relu":
            modules[name] = nn.ReLU()
        elif kind == "leaky_relu":
            modules[name] = nn.LeakyReLU(layer.get("negative_slope", 0.01))
        elif kind == "sigmoid":
            modules[name] = nn.Sigmoid()
        elif kind == "tanh":
            modules[name] = nn.Tanh()
        elif kind == "dropout":
            modules[name] = nn.Dropout(layer["p"])
        elif kind in ("maxpool2d", "avgpool2d"):
            c, h, w = shape
            k = layer["kernel"]
            s, p = layer.get("stride", k), layer.get("padding", 0)
            if kind == "maxpool2d":
                modules[name] = nn.MaxPool2d(k, stride=s, padding=p)
            else:
                modules[name] = nn.AvgPool2d(k, stride=s, padding=p, count_include_pad=True)
            shape = [c, window(h, k, s, p), window(w, k, s, p)]
        elif kind == "flatten":
            modules[name] = nn.Flatten()
            shape = [int(np.prod(shape))]
        else:
            raise ValueError(f"layer {i}: unknown layer type {kind!r}")
    return nn.Sequential(modules)


def load_model(path) -> tuple[torch.nn.Sequential, dict]:
    """The checkpoint's model with its weights, in evaluation mode, and the
    training state (normalisation, class names, ...)."""
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != "wgcnn-checkpoint":
        raise ValueError(f"{path}: not a wgcnn checkpoint (metadata format {metadata.get('format')!r})")
    model = build_sequential(tomllib.loads(metadata["model"]))
    training = json.loads(metadata["training"])
    state = {k: v for k, v in load_file(str(path)).items() if not k.startswith("optimizer.")}
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, training


def find_data_dir(name: str, given: str | None) -> pathlib.Path:
    """Where wgcnn looks: --data-dir, $WGCNN_DATA/<name>, ~/.cache/wgcnn/<name>,
    /usr/share/datasets/<name>."""
    if given:
        return pathlib.Path(given)
    candidates = []
    if os.environ.get("WGCNN_DATA"):
        candidates.append(pathlib.Path(os.environ["WGCNN_DATA"]) / name)
    candidates.append(pathlib.Path.home() / ".cache" / "wgcnn" / name)
    candidates.append(pathlib.Path("/usr/share/datasets") / name)
    for c in candidates:
        if c.is_dir():
            return c
    raise FileNotFoundError(f"no {name} data in {', '.join(map(str, candidates))}; pass --data-dir")


def read_idx(directory: pathlib.Path, stem: str) -> np.ndarray:
    for path in (directory / f"{stem}.gz", directory / stem):
        if path.exists():
            data = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
            dims = data[3]
            shape = [int.from_bytes(data[4 + 4 * d : 8 + 4 * d], "big") for d in range(dims)]
            return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)
    raise FileNotFoundError(f"{directory}: no {stem}[.gz]")


def test_split(dataset: str, data_dir: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """The test images as uint8 (N, C, H, W) and their labels."""
    if dataset == "cifar10":
        raw = np.fromfile(data_dir / "test_batch.bin", dtype=np.uint8).reshape(-1, 3073)
        return raw[:, 1:].reshape(-1, 3, 32, 32), raw[:, 0].astype(np.int64)
    images = read_idx(data_dir, "t10k-images-idx3-ubyte")
    labels = read_idx(data_dir, "t10k-labels-idx1-ubyte")
    return images[:, None, :, :], labels.astype(np.int64)


def normalise(images: np.ndarray, mean, std) -> torch.Tensor:
    """`(x/255 - mean[c]) * (1/std[c])` in float32, exactly as wgcnn's batches."""
    x = images.astype(np.float32) / np.float32(255.0)
    mean = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    inv = (np.float32(1.0) / np.asarray(std, dtype=np.float32)).reshape(1, -1, 1, 1)
    return torch.from_numpy(((x - mean) * inv).astype(np.float32))


def wgcnn_command(given: str | None) -> list[str]:
    if given:
        return given.split()
    built = REPO / "target" / "release" / "wgcnn"
    if built.exists():
        return [str(built)]
    if shutil.which("wgcnn"):
        return ["wgcnn"]
    return ["cargo", "run", "--release", "--quiet", "--manifest-path", str(REPO / "Cargo.toml"), "--"]


def parse_predict(output: str, class_names: list[str], count: int) -> tuple[list[str], np.ndarray]:
    """`wgcnn predict`'s output: per input a line `name: class (p%)`, then an
    indented line of `class=probability` pairs in class order (other lines,
    such as where the data came from, are skipped)."""
    lines = output.splitlines()
    pairs = [
        (head, row)
        for head, row in zip(lines, lines[1:])
        if not head.startswith(" ") and head.endswith("%)") and row.startswith("  ")
    ]
    if len(pairs) != count:
        raise ValueError(f"expected {count} predictions from wgcnn predict, found {len(pairs)}:\n{output}")
    classes, probabilities = [], []
    for head, row in pairs:
        classes.append(head.rsplit(" (", 1)[0].rsplit(": ", 1)[1])
        row, values = row.strip(), []
        # Parse by the known class names: they may contain spaces.
        for name in class_names:
            prefix = f"{name}="
            if not row.startswith(prefix):
                raise ValueError(f"unexpected probability line (wanted {prefix!r}): {row!r}")
            number, _, row = row[len(prefix) :].partition(" ")
            values.append(float(number))
        probabilities.append(values)
    return classes, np.array(probabilities)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a wgcnn checkpoint (.safetensors)")
    parser.add_argument("--index", type=int, action="append", default=[], help="test-set index (repeatable)")
    parser.add_argument("--count", type=int, default=0, help="also the first COUNT test images")
    parser.add_argument("--data-dir", help="the data set's directory (default: where wgcnn looks)")
    parser.add_argument("--compare", action="store_true", help="run `wgcnn predict` on the same images and compare")
    parser.add_argument("--wgcnn", help="the wgcnn command (default: target/release/wgcnn, else wgcnn on PATH, else cargo run)")
    parser.add_argument("--device", type=int, help="wgcnn predict on this GPU adapter (default: --cpu)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed probability difference")
    args = parser.parse_args()

    model, training = load_model(args.checkpoint)
    n_tensors = len(model.state_dict())
    print(f"checkpoint: {args.checkpoint} ({training.get('dataset', '?')}, epoch {training.get('epoch', '?')})")
    print(f"loaded {n_tensors} tensors into torch.nn.Sequential with strict=True:")
    print("  " + str(model).replace("\n", "\n  "))

    indices = list(range(args.count)) + args.index
    if not indices:
        print("(no images: give --count N or --index I to predict)")
        return 0
    dataset = training.get("dataset", "").split()[0]
    images, labels = test_split(dataset, find_data_dir(dataset, args.data_dir))
    x = normalise(images[indices], training["norm_mean"], training["norm_std"])
    with torch.no_grad():
        logits = model(x)
        probabilities = torch.softmax(logits.double(), dim=1).numpy()
    names = training.get("class_names") or [str(k) for k in range(probabilities.shape[1])]
    names = names + [str(k) for k in range(len(names), probabilities.shape[1])]
    predicted = probabilities.argmax(axis=1)
    correct = int((predicted == labels[indices]).sum())
    print(f"torch: {len(indices)} {dataset} test images, {correct} classified correctly")

    if not args.compare:
        for i, k, p in zip(indices, predicted, probabilities):
            print(f"  #{i} (label {labels[i]}): {names[k]} ({100 * p[k]:.2f}%)")
        return 0

    head = wgcnn_command(args.wgcnn) + ["predict", "--checkpoint", str(args.checkpoint)]
    tail = ["--device", str(args.device)] if args.device is not None else ["--cpu"]
    if args.data_dir:
        tail += ["--data-dir", args.data_dir]
    index_args = [a for i in indices for a in ("--index", str(i))]
    command = head + index_args + tail
    shown = index_args if len(indices) <= 4 else index_args[:4] + ["...", "--index", str(indices[-1])]
    print(f"wgcnn: {' '.join(head + shown + tail)}")
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        print(run.stdout + run.stderr, file=sys.stderr)
        return 1
    wgcnn_classes, wgcnn_probabilities = parse_predict(run.stdout, names, len(indices))
    torch_classes = [names[k] for k in predicted]
    agree = sum(a == b for a, b in zip(torch_classes, wgcnn_classes))
    diff = np.abs(wgcnn_probabilities - probabilities)
    worst = np.unravel_index(diff.argmax(), diff.shape)
    print(f"classes agree: {agree}/{len(indices)}")
    print(
        f"max |p_torch - p_wgcnn|: {diff.max():.3e} (image #{indices[worst[0]]}, class {names[worst[1]]}; "
        f"wgcnn prints 6 decimals), tolerance {args.tolerance:g}"
    )
    ok = agree == len(indices) and diff.max() <= args.tolerance
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
