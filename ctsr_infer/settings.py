"""Environment variables → settings, read at call time so tests and users can change them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings", "current"]

_TRUE = {"1", "true", "yes", "on"}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


@dataclass(frozen=True)
class Settings:
    home: Path
    """Root of ctsr-infer's own files (converted students, recorded hashes). ``CTSR_HOME``."""
    offline: bool
    """Never touch the network. ``CTSR_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``."""
    cpu_fast: bool = True
    """``dtype="auto"`` may pick bf16 on CPUs with native bf16 (each family's ``cpu_fast_path``); ``CTSR_CPU_FAST=0``
    keeps fp32 (bit-reproducible across CPUs)."""

    @property
    def models_dir(self) -> Path:
        """Where converted student files are kept."""
        return self.home / "models"


def current() -> Settings:
    """Read the settings from the environment now."""
    default_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ctsr"
    home = Path(os.environ.get("CTSR_HOME", default_home)).expanduser()
    fast = os.environ.get("CTSR_CPU_FAST", "1").strip().lower() not in {"0", "false", "no", "off"}
    return Settings(home=home, offline=_flag("CTSR_OFFLINE") or _flag("HF_HUB_OFFLINE"), cpu_fast=fast)
