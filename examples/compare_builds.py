#!/usr/bin/env python3
"""Two wgcnn builds measured alternately, for a before-and-after on a shared
or throttling machine, where the speed moves from minute to minute.

Runs `OLD ARGS --json` and `NEW ARGS --json` in turn, `--rounds` times (the
old build first in odd rounds, the new one first in even ones), and prints
for each figure (a model and batch size of `bench train`, a shape of `bench
gemm`) the median of each build, the change, and the rounds the new build
won. ARGS is any `wgcnn bench` command line.

    cp target/release/wgcnn /tmp/wgcnn-before    # then change, rebuild
    python3 examples/compare_builds.py /tmp/wgcnn-before target/release/wgcnn \\
        --rounds 6 -- bench train --cpu --model fashion-cnn --batch-size 128 --runs 3
    python3 examples/compare_builds.py /tmp/wgcnn-before target/release/wgcnn \\
        -- bench gemm --shape 1024x1024x1024 --device 0
"""
import argparse
import statistics
import sys

from side_by_side import json_records


def figures(binary, args):
    """`{key: value}` from one run: images/s per (model, batch) of `train`
    lines, GFLOP/s per shape of `gemm` lines."""
    cmd = [binary, *args, "--json"]
    found = {}
    for record in json_records(cmd):
        if record.get("kind") == "train":
            key = f"{record['model']} batch {record['batch_size']} (images/s)"
            found[key] = record["images_per_second"]
        elif record.get("kind") == "gemm":
            found[f"gemm {record['shape']} (GFLOP/s)"] = record["gflops"]
    if not found:
        sys.exit(f"{' '.join(cmd)} printed no train or gemm figures")
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="the build before the change")
    parser.add_argument("new", help="the build after it")
    parser.add_argument("--rounds", type=int, default=6)
    parser.usage = "%(prog)s OLD NEW [--rounds N] -- WGCNN_ARGS..."
    argv = sys.argv[1:]
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        parser.error("give the wgcnn command line after --")
    split = argv.index("--")
    opts, args = parser.parse_args(argv[:split]), argv[split + 1:]
    if opts.rounds < 1:
        parser.error("--rounds must be at least 1")
    runs = {"old": [], "new": []}
    for r in range(opts.rounds):
        order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
        for build in order:
            runs[build].append(figures(getattr(opts, build), args))
        print(f"round {r + 1}/{opts.rounds} done", file=sys.stderr)
    keys = [k for k in runs["old"][0] if all(k in f for f in runs["old"] + runs["new"])]
    width = max(len(k) for k in keys)
    print(f"{'figure':<{width}}  {'old':>10}  {'new':>10}  {'change':>8}  new won")
    for key in keys:
        old = [f[key] for f in runs["old"]]
        new = [f[key] for f in runs["new"]]
        won = sum(n > o for o, n in zip(old, new))
        old_median, new_median = statistics.median(old), statistics.median(new)
        change = 100.0 * (new_median / old_median - 1.0)
        print(f"{key:<{width}}  {old_median:>10.1f}  {new_median:>10.1f}  "
              f"{change:>+7.1f}%  {won} of {opts.rounds}")


if __name__ == "__main__":
    main()
