"""Upscale one image at several t and save a labelled contact sheet (what `ctsr sweep` does).

    python examples/sweep_t.py examples/coffee_lowres.png sheet.png [--model ID_OR_STUDENT_FILE]
"""

import argparse

import ctsr_infer
from ctsr_infer.sheet import contact_sheet

parser = argparse.ArgumentParser()
parser.add_argument("source")
parser.add_argument("target")
parser.add_argument("--model", default=None)
args = parser.parse_args()

ts = [0.0, 0.25, 0.5, 0.75, 1.0]
upscaler = ctsr_infer.load(args.model)
images = upscaler.sweep(args.source, ts)  # one PIL image per t; a ctsr-flow model runs its SR step once
contact_sheet(images, [f"t = {t:g}" for t in ts], title=f"{args.source} - 0 realistic ... 1 faithful").save(args.target)
print(f"wrote {args.target}")
