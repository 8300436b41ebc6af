"""The model as compress sees it: its canonical form, its weights, and the bounds on what it may cost."""
