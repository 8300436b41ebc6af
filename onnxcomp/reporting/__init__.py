"""What a run reports: fidelity, the quality floor, the int8 yardstick, per-layer tables and the HTML report."""
