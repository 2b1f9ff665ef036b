"""CTD's LoRA variant with TRL-style wiring: CTDTrainer takes a model name, raw SFT rows and a peft config; the tuned
LoRA adapter then decodes with LoRAContrast on the stream executor.

    python examples/lora_trl_style.py                      # the embedded default model
    python examples/lora_trl_style.py --model DIR --steps 2
"""

from __future__ import annotations

import argparse

from peft import LoraConfig, TaskType

from ctd_hf import (ContrastProcessor, CTDConfig, CTDTrainer, LoRAContrast, format_prompt, load_sft_data,
                    resource_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="Model folder or hub name ('default': SmolLM2-135M).")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--output-dir", default="runs/example-lora")
    args = parser.parse_args()

    rows = load_sft_data(resource_path("sft", "alpaca_en_demo.json"), fraction=0.1, seed=0)  # raw chat rows
    config = CTDConfig(output_dir=args.output_dir, alpha=0.3, learning_rate=1e-3, max_steps=args.steps,
                       per_device_train_batch_size=4, max_length=256, report_to="none", save_strategy="no")
    trainer = CTDTrainer(model=args.model, args=config, train_dataset=rows,
                         peft_config=LoraConfig(task_type=TaskType.CAUSAL_LM, r=8))
    trainer.train()

    model, tokenizer = trainer.model, trainer.processing_class
    prompt = format_prompt([{"role": "user", "content": "Name three primary colours."}], "chatml")
    inputs = tokenizer([prompt], return_tensors="pt").to(model.device)
    model.eval()
    with ContrastProcessor(LoRAContrast(model, strength=0.3)) as processor:
        output = model.generate(**inputs, logits_processor=[processor], max_new_tokens=32, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))


if __name__ == "__main__":
    main()
