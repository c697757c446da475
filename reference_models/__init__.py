"""PyTorch (autograd) twins of minisft's model and of each method's math: the parity oracle.

Nothing here is imported by minisft itself; tests import these modules and skip cleanly without torch.
"""
