#!/usr/bin/env python3
"""Writes the PyTorch fixtures that `wgcnn check --against` compares with.

Each case is one safetensors file in tests/fixtures/pytorch/ (the format is
documented in src/check/against.rs): the op and its settings in the metadata,
the inputs, and the outputs PyTorch computes for them.

Inputs are drawn in float32 from a fixed seed; PyTorch then evaluates the op
and its gradients (torch.autograd, with a random `grad_y` as the upstream
gradient) in float64 on those exact values, and the results are stored rounded
to float32. The expected tensors are therefore the exact answers to float32
precision, independent of the order in which PyTorch happens to sum, and what
`wgcnn check --against` measures is wgcnn's own rounding error.

Needs torch and safetensors (`pip install torch safetensors`). CI does not run
this script: it checks the committed files. Regenerate with

    python3 tests/pytorch/make_fixtures.py            # rewrites the directory
    python3 tests/pytorch/make_fixtures.py --out DIR  # somewhere else
"""

import argparse
import json
import pathlib
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

SEED = 20240607
ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "pytorch"

# (N, C, H, W, O, kh, kw, stride, padding): batch 1, one and several channels,
# odd and non-square images, kh != kw, stride 2, padding 0/1/2.
CONV = [
    (1, 1, 5, 5, 1, 3, 3, 1, 0),
    (2, 3, 7, 9, 4, 3, 3, 1, 1),
    (3, 2, 8, 6, 5, 3, 3, 2, 1),
    (2, 3, 11, 7, 6, 5, 5, 2, 2),
    (1, 4, 6, 6, 3, 1, 1, 1, 0),
    (2, 1, 12, 12, 6, 5, 5, 1, 2),
    (2, 3, 9, 5, 2, 2, 3, 2, 0),
    (1, 8, 6, 6, 9, 3, 3, 1, 1),
    (2, 3, 6, 10, 4, 3, 5, 2, 1),
    (1, 3, 7, 7, 2, 7, 7, 1, 0),
    (2, 2, 5, 8, 3, 4, 2, 1, 2),
    (1, 1, 1, 1, 2, 1, 1, 1, 0),
    (1, 2, 3, 3, 2, 3, 3, 2, 2),
    (4, 16, 4, 4, 8, 3, 3, 1, 1),
]

# (N, in_features, out_features)
LINEAR = [
    (1, 1, 1),
    (3, 7, 5),
    (8, 33, 17),
    (1, 50, 30),
    (16, 100, 10),
    (5, 4, 130),
    (2, 257, 3),
]

ACTIVATION_SHAPES = [(1,), (7,), (2, 3, 5, 7), (4, 33), (3, 1, 6, 6)]
# (op, settings)
ACTIVATIONS = [
    ("relu", {}),
    ("leaky_relu", {"negative_slope": 0.01}),
    ("leaky_relu", {"negative_slope": 0.2}),
    ("sigmoid", {}),
    ("tanh", {}),
]

# (N, C, H, W, kernel, stride, padding): PyTorch allows padding up to half
# the kernel; several cases pad (max pooling pads with -inf, average pooling
# counts the zeros).
POOL = [
    (1, 1, 4, 4, 2, 2, 0),
    (2, 3, 7, 5, 2, 2, 0),
    (2, 3, 7, 9, 3, 2, 1),
    (1, 2, 6, 6, 3, 3, 0),
    (3, 1, 8, 5, 3, 1, 1),
    (2, 4, 12, 12, 2, 2, 0),
    (1, 3, 5, 11, 4, 3, 2),
    (1, 1, 1, 1, 1, 1, 0),
    (2, 2, 9, 9, 3, 2, 1),
    (1, 3, 6, 7, 2, 1, 1),
    (1, 1, 7, 7, 5, 2, 2),
]

BATCHNORM1D = [(2, 3), (8, 17), (33, 5), (3, 1), (16, 64)]
BATCHNORM2D = [(1, 3, 3, 5), (2, 3, 4, 4), (4, 8, 7, 5), (3, 2, 1, 1), (2, 6, 5, 5)]
# (eps, momentum) per case, cycled: the defaults and non-default settings.
BATCHNORM_SETTINGS = [(1e-5, 0.1), (1e-3, 0.3), (1e-5, 0.1), (1e-2, 0.05), (1e-5, 0.1)]

# (N, K, logit scale)
SOFTMAX = [(1, 1, 3.0), (1, 10, 3.0), (7, 3, 3.0), (64, 10, 5.0), (5, 100, 3.0), (3, 1000, 30.0)]


DTYPES = {torch.float32: "F32", torch.int64: "I64", torch.int32: "I32"}


def serialize(tensors: dict, metadata: dict) -> bytes:
    """A safetensors file with its header keys in sorted order, so the same
    inputs give the same bytes (safetensors' own writer orders the metadata
    at random)."""
    assert sys.byteorder == "little", "safetensors stores little-endian data"
    header = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name]
        data = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


class Writer:
    def __init__(self, out: pathlib.Path):
        self.out = out
        self.gen = torch.Generator().manual_seed(SEED)
        self.counts: dict[str, int] = {}
        self.written: list[pathlib.Path] = []

    # Inputs: float32 draws, then promoted to float64 for the computation.
    def randn(self, *shape, scale=1.0, offset=0.0):
        x = torch.randn(*shape, generator=self.gen, dtype=torch.float32) * scale + offset
        return x.to(torch.float32).double()

    def uniform(self, *shape, low, high):
        x = torch.rand(*shape, generator=self.gen, dtype=torch.float32) * (high - low) + low
        return x.to(torch.float32).double()

    def save(self, op: str, settings: dict, tensors: dict):
        index = self.counts.get(op, 0)
        self.counts[op] = index + 1
        path = self.out / f"{op}_{index:02d}.safetensors"
        metadata = {"op": op}
        metadata.update({k: str(v) for k, v in settings.items()})
        metadata["generator"] = "tests/pytorch/make_fixtures.py"
        metadata["torch"] = torch.__version__.split("+")[0]
        stored = {}
        for name, t in tensors.items():
            t = t.detach()
            if t.is_floating_point():
                t = t.to(torch.float32)
            stored[name] = t.contiguous()
        path.write_bytes(serialize(stored, metadata))
        # Read back through safetensors itself: the file must be standard.
        back = load_file(str(path))
        assert back.keys() == stored.keys() and all(torch.equal(back[k], v) for k, v in stored.items()), path
        self.written.append(path)


def leaf(t):
    return t.clone().requires_grad_(True)


def conv2d(w: Writer):
    for n, c, h, wd, o, kh, kw, s, p in CONV:
        x, weight, bias = leaf(w.randn(n, c, h, wd)), leaf(w.randn(o, c, kh, kw)), leaf(w.randn(o))
        y = F.conv2d(x, weight, bias, stride=s, padding=p)
        grad_y = w.randn(*y.shape)
        gx, gw, gb = torch.autograd.grad(y, (x, weight, bias), grad_y)
        w.save(
            "conv2d",
            {"stride": s, "padding": p},
            dict(x=x, weight=weight, bias=bias, grad_y=grad_y, y=y, grad_x=gx, grad_weight=gw, grad_bias=gb),
        )


def linear(w: Writer):
    for n, i, o in LINEAR:
        x, weight, bias = leaf(w.randn(n, i)), leaf(w.randn(o, i)), leaf(w.randn(o))
        y = F.linear(x, weight, bias)
        grad_y = w.randn(n, o)
        gx, gw, gb = torch.autograd.grad(y, (x, weight, bias), grad_y)
        w.save(
            "linear",
            {},
            dict(x=x, weight=weight, bias=bias, grad_y=grad_y, y=y, grad_x=gx, grad_weight=gw, grad_bias=gb),
        )


def activations(w: Writer):
    for op, settings in ACTIVATIONS:
        for shape in ACTIVATION_SHAPES:
            # Wide inputs reach the saturated tails of sigmoid and tanh.
            x = leaf(w.randn(*shape, scale=4.0))
            if op == "relu":
                y = F.relu(x)
            elif op == "leaky_relu":
                y = F.leaky_relu(x, settings["negative_slope"])
            elif op == "sigmoid":
                y = torch.sigmoid(x)
            else:
                y = torch.tanh(x)
            grad_y = w.randn(*shape)
            (gx,) = torch.autograd.grad(y, (x,), grad_y)
            w.save(op, settings, dict(x=x, grad_y=grad_y, y=y, grad_x=gx))


def pools(w: Writer):
    for op in ("maxpool2d", "avgpool2d"):
        for n, c, h, wd, k, s, p in POOL:
            # Continuous values: no ties, so the arg-max is unambiguous.
            x = leaf(w.randn(n, c, h, wd))
            if op == "maxpool2d":
                y = F.max_pool2d(x, k, s, p)
            else:
                y = F.avg_pool2d(x, k, s, p, count_include_pad=True)
            grad_y = w.randn(*y.shape)
            (gx,) = torch.autograd.grad(y, (x,), grad_y)
            w.save(op, {"kernel": k, "stride": s, "padding": p}, dict(x=x, grad_y=grad_y, y=y, grad_x=gx))


def batchnorm(w: Writer):
    for op, shapes in (("batchnorm1d", BATCHNORM1D), ("batchnorm2d", BATCHNORM2D)):
        for case, shape in enumerate(shapes):
            eps, momentum = BATCHNORM_SETTINGS[case % len(BATCHNORM_SETTINGS)]
            channels = shape[1]
            for training in (True, False):
                # Per-channel offsets away from zero check the variance's cancellation.
                view = (1, channels) + (1,) * (len(shape) - 2)
                offset = w.randn(channels, scale=1.0).view(view)
                x = leaf(w.randn(*shape, scale=1.5) + offset)
                x = leaf(x.detach().to(torch.float32).double())
                weight = leaf(w.uniform(channels, low=0.5, high=1.5))
                bias = leaf(w.randn(channels))
                running_mean = w.randn(channels, scale=0.5)
                running_var = w.uniform(channels, low=0.5, high=2.0)
                rm_out, rv_out = running_mean.clone(), running_var.clone()
                y = F.batch_norm(x, rm_out, rv_out, weight, bias, training=training, momentum=momentum, eps=eps)
                grad_y = w.randn(*shape)
                gx, gw, gb = torch.autograd.grad(y, (x, weight, bias), grad_y)
                tensors = dict(
                    x=x,
                    weight=weight,
                    bias=bias,
                    running_mean=running_mean,
                    running_var=running_var,
                    grad_y=grad_y,
                    y=y,
                    grad_x=gx,
                    grad_weight=gw,
                    grad_bias=gb,
                )
                if training:
                    tensors.update(running_mean_out=rm_out, running_var_out=rv_out)
                w.save(
                    op,
                    {"eps": eps, "momentum": momentum, "training": "1" if training else "0"},
                    tensors,
                )


def softmax_cross_entropy(w: Writer):
    for case, (n, k, scale) in enumerate(SOFTMAX):
        logits = leaf(w.uniform(n, k, low=-scale, high=scale))
        labels = torch.randint(0, k, (n,), generator=w.gen, dtype=torch.int64)
        loss = F.cross_entropy(logits, labels)  # mean over the batch
        (grad,) = torch.autograd.grad(loss, (logits,))
        # Both label dtypes and both loss shapes the format allows.
        if case % 2 == 1:
            labels = labels.to(torch.int32)
        if case % 3 == 2:
            loss = loss.reshape(1)
        w.save("softmax_cross_entropy", {}, dict(logits=logits, labels=labels, loss=loss, grad_logits=grad))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.safetensors"):
        old.unlink()
    torch.use_deterministic_algorithms(True)
    w = Writer(args.out)
    for make in (conv2d, linear, activations, pools, batchnorm, softmax_cross_entropy):
        make(w)
    total = sum(p.stat().st_size for p in w.written)
    print(f"wrote {len(w.written)} fixtures, {total} bytes, to {args.out}")
    for op, count in w.counts.items():
        print(f"  {op}: {count}")


if __name__ == "__main__":
    main()
