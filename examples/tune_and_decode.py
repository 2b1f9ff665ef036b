"""Tune a soft prefix contrastively, then answer a few prompts with plain decoding, Instructive Decoding and CTD.

    python examples/tune_and_decode.py                     # the embedded default model, a few minutes on 2 CPU cores
    python examples/tune_and_decode.py --model DIR --steps 2

The prefix is tuned on the Alpaca sample shipped with ctd_hf; the answers show how each method changes the output.
Whether CTD helps is a measurement: `ctd-hf demo` makes it on held-out tasks, with intervals.
"""

from __future__ import annotations

import argparse

from ctd_hf import CTDMethod, IDMethod, ODMethod, TuneSettings, generate_answers, load_model_and_tokenizer, tune

PROMPTS = ["Name three primary colours.", "Give one tip for sleeping well.",
           "Is the following sentence positive or negative? 'I loved the film.'"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="Model folder or hub name ('default': SmolLM2-135M).")
    parser.add_argument("--steps", type=int, default=16, help="Tuning steps of 8 examples.")
    parser.add_argument("--output-dir", default="runs/example-prefix", help="Where the prefix goes (a rerun resumes).")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()

    metrics = tune(TuneSettings(max_steps=args.steps, max_length=256), args.output_dir, args.model)
    print(f"tuned: contrastive loss {metrics['train_loss']:.3f}, the model's own {metrics['train_original_loss']:.3f}")

    model, tokenizer = load_model_and_tokenizer(args.model)
    messages = [{"role": "user", "content": prompt} for prompt in PROMPTS]
    methods = {"od": ODMethod(), "id": IDMethod(), "ctd": CTDMethod(prefix=args.output_dir, strength=0.3)}
    answers = {name: generate_answers(model, tokenizer, messages, method, max_new_tokens=args.max_new_tokens,
                                      do_sample=False) for name, method in methods.items()}
    for index, prompt in enumerate(PROMPTS):
        print(f"\n### {prompt}")
        for name in methods:
            print(f"[{name}] {answers[name][index]}")


if __name__ == "__main__":
    main()
