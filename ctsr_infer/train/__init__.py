"""Training recipes (the ``train`` extra). The runtime never imports this package.

Install with ``pip install "ctsr-infer[train]"``.
"""

from __future__ import annotations

__all__: list[str] = []
