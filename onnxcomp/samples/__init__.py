"""Sample inputs: the user's data, the model's input signature, and generated inputs that run it."""
