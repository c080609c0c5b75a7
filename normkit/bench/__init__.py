"""``normkit bench``: speed measured side by side with PyTorch, against the memory floor."""
