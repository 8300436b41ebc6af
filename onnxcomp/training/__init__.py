"""Training methods: compression-aware fine-tuning and neuron elimination (VIBNet)."""
