"""Helpers shared by the tests."""

import contextlib

from minisft.core import fastpath


def spy_fast_paths(monkeypatch, points=None):
    """Record every call of the registered fast paths of `points` (default: all): returns the list
    that each call appends its point's name to."""
    calls = []
    for point in fastpath.POINTS if points is None else points:
        if point.fast is None:
            continue
        implementation, applies = point.fast

        def spy(*args, _impl=implementation, _name=point.__qualname__, **kwargs):
            calls.append(_name)
            return _impl(*args, **kwargs)

        monkeypatch.setattr(point, "fast", (spy, applies))
    return calls


@contextlib.contextmanager
def fast_paths(on):
    """fastpath.ENABLED = on inside the block (for hypothesis tests, where monkeypatch cannot be used),
    as MINISFT_FUSED at import would set it."""
    old = fastpath.ENABLED
    fastpath.ENABLED = bool(on)
    try:
        yield
    finally:
        fastpath.ENABLED = old
