#!/usr/bin/env python3
"""Wall time and peak memory of `faceall convert-tf` on the real FaceNet,
against coremltools' 24.5 s and tf2onnx's 33.6 s for the same graph
(../shared/docs/ANCHORS.md, same machine kind).

    python3 scripts/bench_convert.py [--runs 5] [--to caffe] [--model M]

"Keeps up with the disk": before each conversion the same number of bytes
it writes is written to a scratch file in the same directory (4 MB
writes, through the page cache as convert-tf's are, then deleted), so each
round compares the conversion with the plain write of its output at that
moment. On this machine kind the page cache's write speed swings 10x from
one minute to the next (a fresh page costs the host a fault), and the
ratio is the number that does not.
"""
import argparse
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANCHORS = {"coremltools convert (TF -> Core ML)": 24.5, "tf2onnx (TF -> ONNX)": 33.6}


def model_size(path):
    """Bytes of the model's files: a frozen graph; a SavedModel directory's
    files; a .meta file with the checkpoint beside it (PREFIX.index and
    PREFIX.data-*, PREFIX the meta file's stem or the one whose name starts
    with it)."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    size = os.path.getsize(path)
    if path.endswith(".meta"):
        d, stem = os.path.dirname(path) or ".", os.path.basename(path)[:-5]
        size += sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)
                    if f.startswith(stem) and (f.endswith(".index") or ".data-" in f))
    return size


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--to", default="caffe")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/faceall"))
    ap.add_argument("--model", default=os.path.join(ROOT, ".cache/models/graph_final.pb"))
    ap.add_argument("--out-root", default=None, help="where the outputs go (default: the system temp dir)")
    a = ap.parse_args()
    size = model_size(a.model)
    times, floors = [], []
    chunk = os.urandom(4 << 20)
    with tempfile.TemporaryDirectory(dir=a.out_root) as out:
        written = 0
        for r in range(a.runs + 1):
            for f in os.listdir(out):
                (shutil.rmtree if os.path.isdir(os.path.join(out, f)) else os.unlink)(os.path.join(out, f))
            if r > 0:
                # The floor: the bytes the conversion writes, written plainly.
                scratch = os.path.join(out, "floor.bin")
                t0 = time.perf_counter()
                fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                left = written
                while left > 0:
                    left -= os.write(fd, chunk[:min(left, len(chunk))])
                os.close(fd)
                floors.append(time.perf_counter() - t0)
                os.unlink(scratch)
            t0 = time.perf_counter()
            p = subprocess.run([a.bin, "convert-tf", a.model, "--to", a.to, "--out-dir", out, "--json"],
                               capture_output=True)
            took = time.perf_counter() - t0
            if p.returncode != 0:
                raise SystemExit(p.stderr.decode())
            written = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
            if r > 0:  # round 0 learns the size written (and warms the cache)
                times.append(took)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    med = statistics.median(times)
    print(f"model: {a.model} ({size / 1e6:.1f} MB), --to {a.to}, wrote {written / 1e6:.1f} MB")
    print(f"convert-tf, whole process: median {med:.3f} s over {a.runs} runs (min {min(times):.3f} s), "
          f"{size / 1e6 / med:.0f} MB/s of the model")
    ratios = [t / f for t, f in zip(times, floors)]
    print(f"plain write of the same {written / 1e6:.0f} MB just before each run: median "
          f"{statistics.median(floors):.3f} s (min {min(floors):.3f}, max {max(floors):.3f}); "
          f"conversion / write per round: median {statistics.median(ratios):.2f} "
          f"({', '.join(f'{x:.2f}' for x in ratios)})")
    print(f"peak RSS: {peak / 1e6:.0f} MB = {peak / size:.2f}x the model size")
    for name, secs in ANCHORS.items():
        print(f"vs {name} {secs} s: {secs / med:.0f}x faster")


if __name__ == "__main__":
    main()
