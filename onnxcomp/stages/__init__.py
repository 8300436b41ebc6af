"""The compression flow's stages, each a public function that `onnxcomp.pipeline` calls in turn.

`options` (what a run asks for and returns), `steps` (progress lines and per-stage seconds),
`analyze` (canonicalize, price, measure sensitivity), `finetune` (training data, neuron
elimination, pruning and codebook fine-tuning), `build` (apply a plan: prune, cluster, encode,
clean up), `fit` (plan and build until the file fits the target), `verify` (outputs in ONNX
Runtime, guards, the report). Nothing here imports `onnxcomp.pipeline`.
"""
