"""Row blocks: how the NumPy bodies of the memory-bound layers walk their arrays.

A body that makes many passes over an activation (GELU: 9 in forward, 17 in backward) runs them one
block of rows at a time on NumPy, so a block and its temporaries stay in the CPU's cache instead of
streaming the whole array through memory once per pass. Every operation in such a body is
elementwise or works within a row, so the result does not depend on the blocking, bit for bit
(tests/test_nn_grad.py::test_row_blocks_do_not_change_results). On CuPy the whole array is one
block: one kernel per pass over everything is what a GPU wants.
"""

import numpy as np

BLOCK_ELEMENTS = 1 << 16  # 256 KiB of float32: a block and a few temporaries fit a core's L2 cache


def row_blocks(n_rows, row_size, xp):
    """Slices covering range(n_rows): blocks of about BLOCK_ELEMENTS entries (at least one row
    each) on NumPy, one slice of everything on CuPy."""
    if xp is not np:
        return [slice(0, n_rows)]
    step = max(1, BLOCK_ELEMENTS // max(1, row_size))
    return [slice(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]
