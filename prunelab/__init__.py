"""prunelab: structured (channel) pruning research in one PyTorch core."""

__version__ = "0.1.0"
