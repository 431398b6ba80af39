"""Where the declarative files live: `envs/` (suite specs) and `policies/` (recipes, checkpoints).

In a checkout they sit beside the package; a wheel installs them under `<prefix>/share/vla-agents/`
(`[tool.setuptools.data-files]` in pyproject.toml), so both layouts resolve the same names.
"""
from __future__ import annotations

import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]
_INSTALLED = Path(sys.prefix) / "share" / "vla-agents"


def resource_dir(name: str) -> Path:
    """The `envs` or `policies` folder, preferring the checkout's."""
    for root in (_CHECKOUT, _INSTALLED):
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"cannot find the {name!r} folder in {_CHECKOUT} or {_INSTALLED}; reinstall vla-agents")
