"""PyTorch (autograd) twins of minisft's model and of each method's math: the parity oracle.

Not part of the installed package (setup.cfg installs minisft only): tests import it from the source
checkout (pytest puts the repository root on sys.path) and skip cleanly without torch. minisft never
imports it (tests/test_layers.py checks); `minisft bench` runs `python -m reference_models.bench.step` in a
child process from the checkout.
"""
