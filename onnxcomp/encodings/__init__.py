"""Weight encodings and their decode subgraphs: codebooks, packing, and how a saved model stores weights."""
