"""``python -m ctsr_infer.cli`` (as ``accelerate launch -m ctsr_infer.cli train ...`` runs it)."""

from . import main

main()
