"""CTDTrainer: the loss is the formula, only the prefix learns, and trainer logits equal a plain prefixed forward."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from safetensors.torch import load_file
from transformers import TrainerCallback

from ctd_hf import (CTDConfig, CTDTrainer, RightPaddingCollator, add_soft_prefix, contrastive_loss, load_adapter,
                    load_sft_data, tokenize_sft)
from ctd_hf.models import ensure_pad_token
from ctd_hf.adapter import prefix_embeddings

from conftest import SFT_SAMPLE


@pytest.fixture
def train_data(tokenizer):
    ensure_pad_token(tokenizer)
    return tokenize_sft(load_sft_data(SFT_SAMPLE).select(range(16)), tokenizer, max_length=96)


def make_trainer(model, tokenizer, data, tmp_path, **config) -> CTDTrainer:
    defaults = dict(output_dir=str(tmp_path / "out"), report_to="none", per_device_train_batch_size=4, max_steps=3,
                    learning_rate=5e-2, save_strategy="no", seed=0)
    return CTDTrainer(model=model, args=CTDConfig(**{**defaults, **config}), train_dataset=data,
                      data_collator=RightPaddingCollator(tokenizer.pad_token_id))


def batch_of(data, tokenizer, rows=(0, 1, 2)) -> dict:
    return RightPaddingCollator(tokenizer.pad_token_id)([data[i] for i in rows])


def prefixed_forward(base, prefix: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Logits of one unpadded row with the prefix prepended: the plain definition of z~."""
    embeds = torch.cat([prefix[None], base.get_input_embeddings()(ids[None])], dim=1)
    return base(inputs_embeds=embeds).logits[0, prefix.shape[0]:]


def reference_loss(base, prefix, batch, alpha) -> torch.Tensor:
    """CE of softmax(z - alpha z~) summed over all label tokens of the batch, each row computed alone."""
    total, count = 0.0, 0
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        ids, labels = ids[mask.bool()], labels[mask.bool()]
        z = base(input_ids=ids[None]).logits[0]
        z_tilde = prefixed_forward(base, prefix, ids)
        log_probs = torch.log_softmax(z - alpha * z_tilde, dim=-1)
        for t in range(len(ids) - 1):
            if labels[t + 1] != -100:
                total = total - log_probs[t, labels[t + 1]]
                count += 1
    return total / count


def test_loss_equals_independent_computation(tiny_model, tokenizer, train_data, tmp_path):
    model = add_soft_prefix(tiny_model, num_virtual_tokens=5)
    trainer = make_trainer(model, tokenizer, train_data, tmp_path, alpha=0.3)
    batch = batch_of(train_data, tokenizer)
    assert (batch["attention_mask"] == 0).any(), "the batch must hold padding"
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        expected = reference_loss(tiny_model, prefix_embeddings(model), batch, 0.3)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_the_public_loss_is_the_trainers(tiny_model, tokenizer, train_data, tmp_path):
    """``ctd_hf.contrastive_loss`` on a batch's full z and z~ (a TRL user's own compute_loss) equals CTDTrainer's."""
    model = add_soft_prefix(tiny_model, num_virtual_tokens=5)
    trainer = make_trainer(model, tokenizer, train_data, tmp_path, alpha=0.3)
    batch = batch_of(train_data, tokenizer)
    with torch.no_grad():
        with model.disable_adapter():
            z = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # peft returns logits for the 5 virtual tokens too, before the sequence's own.
        z_tilde = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 5:]
        expected = trainer.compute_loss(model, batch)
    torch.testing.assert_close(contrastive_loss(z, z_tilde, batch["labels"], alpha=0.3), expected,
                               rtol=1e-6, atol=1e-6)


def test_alpha_zero_is_plain_loss_and_gives_prefix_no_gradient(tiny_model, tokenizer, train_data, tmp_path):
    model = add_soft_prefix(tiny_model, num_virtual_tokens=5)
    trainer = make_trainer(model, tokenizer, train_data, tmp_path, alpha=0.0)
    batch = batch_of(train_data, tokenizer)
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    with torch.no_grad():
        plain = tiny_model(**batch).loss
    torch.testing.assert_close(loss, plain, rtol=1e-6, atol=1e-6)
    gradient = model.prompt_encoder["default"].embedding.weight.grad
    assert gradient is None or torch.count_nonzero(gradient) == 0


def test_trainer_correction_logits_equal_plain_prefixed_forward(tiny_model, tokenizer, train_data, tmp_path):
    model = add_soft_prefix(tiny_model, num_virtual_tokens=5)
    trainer = make_trainer(model, tokenizer, train_data, tmp_path)
    prefix = prefix_embeddings(model)
    for rows in ((0,), (0, 1, 2, 3)):  # without and with padding in the batch
        batch = batch_of(train_data, tokenizer, rows)
        with torch.no_grad():
            _, outputs = trainer.compute_loss(model, batch, return_outputs=True)
            correction = outputs.logits[:, -batch["input_ids"].shape[1]:]
            for row, (ids, mask) in enumerate(zip(batch["input_ids"], batch["attention_mask"])):
                expected = prefixed_forward(tiny_model, prefix, ids[mask.bool()])
                torch.testing.assert_close(correction[row, : int(mask.sum())], expected, rtol=1e-5, atol=1e-5)


def test_training_changes_only_the_prefix_and_reloads_identically(tiny_model, tokenizer, train_data, tmp_path):
    frozen = {name: tensor.clone() for name, tensor in tiny_model.state_dict().items()}
    model = add_soft_prefix(tiny_model, num_virtual_tokens=5)
    before = prefix_embeddings(model).clone()
    trainer = make_trainer(model, tokenizer, train_data, tmp_path)
    trainer.train()
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(tensor, frozen[name]), f"{name} changed"
    after = prefix_embeddings(model)
    assert not torch.allclose(before, after)

    trainer.save_model(str(tmp_path / "prefix"))
    assert {"adapter_config.json", "adapter_model.safetensors", "ctd_hf.json"} <= {
        p.name for p in (tmp_path / "prefix").iterdir()
    }
    ids = torch.tensor(train_data[0]["input_ids"])
    with torch.no_grad():
        expected = prefixed_forward(tiny_model, after, ids)
        for reloaded in (
            load_adapter(tiny_model, tmp_path / "prefix"),
            PeftModel.from_pretrained(tiny_model, str(tmp_path / "prefix")),
        ):
            assert torch.equal(prefix_embeddings(reloaded), after)
            logits = reloaded(input_ids=ids[None]).logits[0, 5:]
            assert torch.equal(logits, expected)


def test_checkpoint_resume_matches_uninterrupted_run(tokenizer, train_data, tmp_path):
    from conftest import build_model

    class StopAfterTwoSteps(TrainerCallback):
        """Interrupts the run after step 2, as a killed job would, once its checkpoint is written."""

        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 2

    def run(output: str, resume: str | None = None, interrupt: bool = False) -> torch.Tensor:
        model = add_soft_prefix(build_model(len(tokenizer)), num_virtual_tokens=5)
        trainer = make_trainer(model, tokenizer, train_data, tmp_path, output_dir=str(tmp_path / output),
                               max_steps=4, save_strategy="steps", save_steps=2)
        if interrupt:
            trainer.add_callback(StopAfterTwoSteps())
        trainer.train(resume_from_checkpoint=resume)
        return prefix_embeddings(model).detach().clone()

    full = run("full")
    interrupted = run("cut", interrupt=True)
    assert not torch.allclose(interrupted, full)
    checkpoint = tmp_path / "cut" / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "ctd_hf.json").is_file()
    resumed = run("cut", resume=str(checkpoint))
    torch.testing.assert_close(resumed, full, rtol=0, atol=1e-6)


def test_lora_variant_trains_only_lora_weights(tiny_model, tokenizer, train_data, tmp_path):
    frozen = {name: tensor.clone() for name, tensor in tiny_model.state_dict().items()}
    model = get_peft_model(tiny_model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, init_lora_weights=False))
    trainer = make_trainer(model, tokenizer, train_data, tmp_path, alpha=0.3)
    batch = batch_of(train_data, tokenizer)
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        with model.disable_adapter():
            z = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
        z_tilde = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
        labels = batch["labels"][:, 1:]
        expected = F.cross_entropy((z - 0.3 * z_tilde)[:, :-1].transpose(1, 2), labels, ignore_index=-100)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)

    lora_before = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    base_state = model.get_base_model().state_dict()
    for name, tensor in frozen.items():
        lora_free_name = name.replace(".weight", ".base_layer.weight")
        current = base_state.get(name, base_state.get(lora_free_name))
        assert torch.equal(current, tensor), f"{name} changed"
    assert any(not torch.equal(p, lora_before[n]) for n, p in model.named_parameters() if p.requires_grad)
    trainer.save_model(str(tmp_path / "lora"))
    saved = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    assert saved and all("lora_" in key for key in saved)


def test_refuses_left_padding_and_plain_models(tiny_model, tokenizer, train_data, tmp_path):
    model = add_soft_prefix(tiny_model, num_virtual_tokens=3)
    trainer = make_trainer(model, tokenizer, train_data, tmp_path)
    batch = batch_of(train_data, tokenizer, (0, 1))
    left = {key: torch.stack([row.roll(int((row_mask == 0).sum())) for row, row_mask in
                              zip(value, batch["attention_mask"])]) for key, value in batch.items()}
    if not (left["attention_mask"][:, 0] == 0).any():
        left["attention_mask"][1, 0] = 0
    with pytest.raises(ValueError, match="right padding"):
        trainer.compute_loss(model, left)
    with pytest.raises(TypeError, match="add_soft_prefix"):
        CTDTrainer(model=tiny_model, args=CTDConfig(output_dir=str(tmp_path), report_to="none"))
    with pytest.raises(ValueError, match="alpha"):
        CTDConfig(output_dir=str(tmp_path), alpha=float("nan"))


def test_batch_without_label_tokens_gives_zero_loss(tiny_model, tokenizer, train_data, tmp_path):
    model = add_soft_prefix(tiny_model, num_virtual_tokens=3)
    trainer = make_trainer(model, tokenizer, train_data, tmp_path)
    batch = batch_of(train_data, tokenizer, (0, 1))
    batch["labels"][:] = -100
    loss = trainer.compute_loss(model, batch)
    assert torch.isfinite(loss) and loss.item() == 0.0


def test_trl_style_construction_equals_the_explicit_form(tiny_model_dir, tokenizer, tmp_path):
    """CTDTrainer(model=<name>, train_dataset=<raw rows>, peft_config=...) tokenises, collates and wraps as the explicit
    form does, and trains the same prefix."""
    import datasets
    import transformers
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    rows = datasets.Dataset.from_list(json.loads(SFT_SAMPLE.read_text())[:8])
    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4)

    def args(name: str) -> CTDConfig:
        return CTDConfig(output_dir=str(tmp_path / name), max_steps=2, per_device_train_batch_size=4, seed=0,
                         learning_rate=5e-2, report_to="none", save_strategy="no", max_length=96, disable_tqdm=True)

    transformers.set_seed(0)
    trl = CTDTrainer(model=str(tiny_model_dir), args=args("trl"), train_dataset=rows, peft_config=config)
    trl.train()
    transformers.set_seed(0)
    ensure_pad_token(tokenizer)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config)
    explicit = CTDTrainer(model=model, args=args("explicit"), train_dataset=tokenize_sft(load_sft_data(rows), tokenizer,
                                                                                       "chatml", 96),
                          data_collator=RightPaddingCollator(tokenizer.pad_token_id))
    explicit.train()
    assert torch.equal(prefix_embeddings(trl.model), prefix_embeddings(explicit.model))
    lora = CTDTrainer(model=str(tiny_model_dir), args=args("lora"), train_dataset=rows,
                      peft_config=LoraConfig(task_type=TaskType.CAUSAL_LM, r=2))
    assert lora.train().global_step == 2


def test_trl_prompt_completion_rows_are_chat_rows():
    import datasets

    chat = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    forms = [{"prompt": "Name a colour.", "completion": "Blue."},  # TRL's standard prompt-completion
             {"prompt": chat[:1], "completion": chat[1:]},  # TRL's conversational prompt-completion
             {"messages": chat}]
    loaded = [load_sft_data(datasets.Dataset.from_list([form]))[0]["messages"] for form in forms]
    stripped = [[{k: m[k] for k in ("role", "content")} for m in messages] for messages in loaded]
    assert stripped == [chat, chat, chat]
