"""SHA-256 of compressed files for fixed configurations, to show a refactoring changes no output byte.

    python -m bench.identical --out hashes.json [--no-minilm]
    python -m bench.identical --compare before.json after.json

Configurations: data-free LeNet-300-100 at 1/12 of its bytes and LeNet-5 at 1/10 (as `bench.run`
compresses them in its "no data" mode), calibrated LeNet-300-100 at 1/12 (bench.run's "calibrated" mode:
the 2,000 MNIST training images of `CALIBRATION`), and paraphrase-MiniLM-L3 at 1/6.5 (as `bench.minilm`), the
latter only where its package is installed. Data-free compression runs neither channel analysis
nor neuron elimination, so `EliminateNeuronsPass` also runs on its own: data-free by weight norm
on the three MNIST models and MiniLM-L3, and with half of each group's channels kept by
`replacement_errors` on 500 MNIST training images (mean replacement) on LeNet-5 and the ResNet.
`--compare` prints one line per configuration and exits 1 when any hash differs or is missing
on one side.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from bench.run import CALIBRATION, MODELS, ROOT
from onnxcomp.samples.data import load_samples
from onnxcomp.modelfile import load_model, save_model
from onnxcomp.passes.eliminate_neurons import EliminateNeuronsPass, replacement_errors
from onnxcomp.pipeline import CompressOptions, compress_file

# (model file in models/, norm threshold of EliminateNeuronsPass(select="norm"), keep half by replacement error)
ELIMINATIONS = [("lenet300.onnx", 0.5, False), ("lenet5.onnx", 0.2, True), ("resnet_mnist.onnx", 1.0, True)]


def configurations(with_minilm: bool) -> list[tuple[str, Path, partial]]:
    """(name, source model, function(source, output) that writes the file to hash)."""
    lenets = [(f"{name} 1/{ratio} no data", ROOT / "models" / file, ratio) for name, (file, ratio) in MODELS.items()]
    rows = [(name, source, partial(compress, ratio=ratio)) for name, source, ratio in lenets]
    file, ratio = MODELS["LeNet-300-100"]
    rows.append((f"LeNet-300-100 1/{ratio} calibrated", ROOT / "models" / file, partial(compress, ratio=ratio, calibrated=True)))
    for file, threshold, by_replacement in ELIMINATIONS:
        rows.append((f"{file} eliminate norm {threshold}", ROOT / "models" / file, partial(eliminate, threshold=threshold)))
        if by_replacement:
            rows.append((f"{file} eliminate half by replacement error, 500 samples", ROOT / "models" / file, eliminate))
    if with_minilm:
        from bench.minilm import model_path

        try:
            minilm = model_path()
        except SystemExit as missing:
            print(f"skipping MiniLM-L3: {missing}", file=sys.stderr)
        else:
            rows.append(("MiniLM-L3 1/6.5 no data", minilm, partial(compress, ratio=6.5)))
            rows.append(("MiniLM-L3 eliminate norm 0.5", minilm, partial(eliminate, threshold=0.5)))
    return rows


def compress(source: Path, output: Path, ratio: float, calibrated: bool = False) -> None:
    target = int(source.stat().st_size / ratio)
    samples = load_samples(CALIBRATION, load_model(source)) if calibrated else None
    compress_file(source, output, CompressOptions(target_bytes=target, force=True), samples=samples, overwrite=True)


def eliminate(source: Path, output: Path, threshold: float | None = None) -> None:
    model = load_model(source)
    if threshold is not None:
        EliminateNeuronsPass(select="norm", threshold=threshold)(model)
    else:
        samples = {"input": np.load(CALIBRATION)["input"][:500]}
        errors = replacement_errors(model, samples)
        keep = {}
        for name, score in errors.items():
            if not name.startswith("input:"):
                keep[name] = np.zeros(len(score), bool)
                keep[name][np.argsort(-score, kind="stable")[: math.ceil(len(score) / 2)]] = True
        EliminateNeuronsPass(keep=keep, samples=samples)(model)
    save_model(model, output, overwrite=True)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record(out: Path, with_minilm: bool) -> dict[str, dict]:
    hashes = {}
    with tempfile.TemporaryDirectory() as folder:
        for index, (name, source, run) in enumerate(configurations(with_minilm)):
            output = Path(folder) / f"{index}.{source.stem}.onnx"
            started = time.perf_counter()
            run(source, output)
            hashes[name] = {"sha256": digest(output), "bytes": output.stat().st_size,
                            "seconds": round(time.perf_counter() - started, 1)}
            print(f"{name}: {hashes[name]}", flush=True)
    out.write_text(json.dumps(hashes, indent=2) + "\n")
    return hashes


def compare(before: Path, after: Path) -> int:
    old, new = json.loads(before.read_text()), json.loads(after.read_text())
    differing = 0
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name, {}).get("sha256"), new.get(name, {}).get("sha256")
        same = a is not None and a == b
        differing += not same
        print(f"{'identical' if same else 'DIFFERENT'}  {name}: {a} vs {b}")
    print(f"{len(old.keys() | new.keys()) - differing} identical, {differing} different or missing")
    return 1 if differing else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the hashes here")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--no-minilm", action="store_true", help="only the two LeNets")
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if not args.out:
        parser.error("give --out or --compare")
    record(args.out, not args.no_minilm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
