"""``ctd-hf demo``: does CTD help the model? Tune, decode a held-out SuperNI sample with od, id and ctd, report the
differences with their 95% intervals."""

from __future__ import annotations

import argparse

from ..study.demo import FULL, QUICK, run_demo
from .arguments import output_folder


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="Does CTD help this model? Tune a prefix, decode a held-out SuperNI "
                                              "sample with od, id and ctd, and report differences with intervals.")
    demo.add_argument("--output-dir", type=output_folder, default=None,
                      help="The prefix, predictions and report go here (default runs/demo, or runs/demo-quick with "
                           "--quick, so the two never meet in one folder); a rerun resumes.")
    demo.add_argument("--prefix", default=None, help="Reuse a prefix folder (written by `ctd-hf tune`) instead of "
                                                     "tuning one.")
    demo.add_argument("--quick", action="store_true", help="A small run that shows the pipeline (a few minutes); "
                                                          "too small to answer the question.")
    demo.add_argument("--model", default="default", help="Local folder or hub name; 'default' is the embedded "
                                                         "SmolLM2-135M-Instruct.")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict:
    output_dir = args.output_dir or ("runs/demo-quick" if args.quick else "runs/demo")
    return run_demo(output_dir, QUICK if args.quick else FULL, args.prefix, args.model)
