"""Upscale one image with the Python API.

    python examples/upscale_one.py IN.png OUT.png [--model ID_OR_STUDENT_FILE] [--t 0.4]
"""

import argparse

import ctsr_infer

parser = argparse.ArgumentParser()
parser.add_argument("source")
parser.add_argument("target")
parser.add_argument("--model", default=None)
parser.add_argument("--t", type=float, default=None)
args = parser.parse_args()

upscaler = ctsr_infer.load(args.model)  # load once ...
image = upscaler.upscale(args.source, t=args.t)  # ... call many times; t=None uses the model's default
image.save(args.target)
print(f"{args.source} -> {args.target} ({image.size[0]}x{image.size[1]})")
