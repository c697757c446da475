"""minisft's version, and the git commit of the source checkout it runs from (when it is one)."""

import functools
import subprocess
from pathlib import Path

__version__ = "0.1.0"


@functools.lru_cache(maxsize=1)
def git_commit():
    """The commit (40 hex digits) of the checkout holding this package, or None when it is not in
    a git checkout or git is missing. A working tree with uncommitted changes gets "-dirty"."""
    root = Path(__file__).resolve().parents[2]  # minisft/core/version.py -> the checkout
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")
