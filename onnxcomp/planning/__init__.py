"""Planning: each weight's priced options, layer sensitivity, error compensation and the allocation under the budget."""
