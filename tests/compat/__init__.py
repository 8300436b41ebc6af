"""Cross-version check: compressed models from the test suite, re-run in the latest onnxruntime."""
