"""transformers' ``custom_generate`` hook: the callable ``ctd_hf.custom_generate`` decodes as the executors do, and a
prefix folder exported by ``ctd-hf export-hub`` decodes CTD through ``custom_generate=FOLDER`` token for token."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub import ModelCard
from peft import LoraConfig, TaskType, get_peft_model
from transformers import (AutoModelForCausalLM, DynamicCache, LogitsProcessor, NoBadWordsLogitsProcessor,
                          RepetitionPenaltyLogitsProcessor)

import ctd_hf
from conftest import build_model
from ctd_hf import (ContrastiveDecodingContrast, ContrastProcessor, CTDConfig, CTDContrast, CTDTrainer,
                    InstructiveContrast, OriginalPredictions, RightPaddingCollator, add_soft_prefix, generate_doubled)
from ctd_hf._compat import CACHE_ARGUMENT
from ctd_hf.cli import main
from ctd_hf.integrations.custom_generate import BACKENDS
from ctd_hf.integrations.hub import export_custom_generate
from ctd_hf.adapter import AdapterMismatchError


@pytest.fixture
def lively(tokenizer):
    """A tiny random Llama whose greedy answers vary (larger init), a CTD contrast that changes them, a batch."""
    model = build_model(len(tokenizer), initializer_range=0.2)
    torch.manual_seed(0)
    contrast = CTDContrast(model, torch.randn(4, 32), strength=0.5)
    tokenizer.pad_token = tokenizer.eos_token
    inputs = tokenizer(["Name three colours.", "What is the capital of France? Answer:"], return_tensors="pt",
                       padding=True, padding_side="left")
    return model, contrast, {**inputs, "max_new_tokens": 6, "pad_token_id": tokenizer.pad_token_id}


@pytest.mark.parametrize("options", [dict(do_sample=False), dict(do_sample=True, temperature=0.7, top_k=20),
                                     dict(num_beams=3, num_return_sequences=2, do_sample=False),
                                     dict(do_sample=False, repetition_penalty=1.3)],
                         ids=["greedy", "sampling", "beams", "repetition-penalty"])
def test_callable_decodes_as_the_executors(lively, options):
    model, contrast, inputs = lively
    torch.manual_seed(0)
    expected = generate_doubled(model, contrast, **inputs, **options)
    for backend in ("doubled", "stream"):
        torch.manual_seed(0)
        output = model.generate(**inputs, **options, custom_generate=ctd_hf.custom_generate, contrast=contrast,
                                backend=backend)
        assert torch.equal(output, expected), backend
    torch.manual_seed(0)
    assert not torch.equal(model.generate(**inputs, **options), expected)  # the contrast changes the answers


def test_callable_runs_id_and_cd_and_returns_generate_outputs(lively):
    model, contrast, inputs = lively
    noisy = torch.tensor([[0, 0, 7, 8, 9], [1, 2, 3, 4, 5]])
    instructive = InstructiveContrast(model, noisy, (noisy > 0).long(), strength=0.5)
    assert torch.equal(model.generate(**inputs, custom_generate=ctd_hf.custom_generate, contrast=instructive),
                       generate_doubled(model, instructive, **inputs))
    amateur = build_model(model.config.vocab_size, seed=1, num_hidden_layers=1, initializer_range=0.2)
    contrastive = ContrastiveDecodingContrast(model, amateur, plausibility=0.1, strength=1.0)
    with ContrastProcessor(contrastive) as processor:
        expected = model.generate(**inputs, logits_processor=[processor])
    assert torch.equal(model.generate(**inputs, custom_generate=ctd_hf.custom_generate, contrast=contrastive,
                                      backend="stream"), expected)
    output = model.generate(**inputs, custom_generate=ctd_hf.custom_generate, contrast=contrast,
                            return_dict_in_generate=True, output_scores=True)
    reference = generate_doubled(model, contrast, **inputs, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(output.sequences, reference.sequences)
    assert all(torch.equal(a, b) for a, b in zip(output.scores, reference.scores))


def test_callable_refuses_what_it_cannot_run(lively):
    model, contrast, inputs = lively
    cases = [({}, TypeError, "needs `contrast=`"),
             ({"contrast": contrast, "backend": "fast"}, ValueError, "`backend` is one of"),
             ({"contrast": contrast, "penalty_alpha": 0.6, "top_k": 4}, ValueError, "contrastive_search")]
    for options, error, message in cases:
        with pytest.raises(error, match=message):
            model.generate(**inputs, custom_generate=ctd_hf.custom_generate, **options)


class KeepTopTwo(LogitsProcessor):
    """A user processor that keeps the two best scores it is given: before the contrast it limits the contrast's
    pick to the model's two likeliest tokens, after it would change nothing, so it shows where the contrast runs."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores.masked_fill(scores < scores.topk(2, dim=-1).values[:, -1:], float("-inf"))


@pytest.mark.parametrize("user", [KeepTopTwo(), RepetitionPenaltyLogitsProcessor(1.5),
                                  NoBadWordsLogitsProcessor([[308], [100]], eos_token_id=2)],
                         ids=["keep-top-two", "repetition-penalty", "bad-words"])
def test_every_executor_runs_the_contrast_after_the_callers_processors(lively, user):
    """Issue 20: generate_doubled ran the contrast before the caller's processors, custom_generate and the stream
    executor after them; all now give the stream executor's tokens with the contrast passed last."""
    model, contrast, inputs = lively
    options = {**inputs, "max_new_tokens": 8, "do_sample": False}
    with ContrastProcessor(contrast) as processor:
        expected = model.generate(**options, logits_processor=[user, processor])
        assert not torch.equal(expected, model.generate(**options, logits_processor=[processor]))  # user matters
        if isinstance(user, KeepTopTwo):  # and so does the order
            assert not torch.equal(expected, model.generate(**options, logits_processor=[processor, user]))
    assert torch.equal(generate_doubled(model, contrast, **options, logits_processor=[user]), expected)
    for backend in BACKENDS:
        output = model.generate(**options, logits_processor=[user], custom_generate=ctd_hf.custom_generate,
                                contrast=contrast, backend=backend)
        assert torch.equal(output, expected), backend


def test_doubled_refusals_read_the_same_from_both_entry_points(lively):
    """One check (ctd_hf.decoding.doubled.check_doubled) refuses for generate_doubled and custom_generate alike."""
    model, contrast, inputs = lively
    other = build_model(model.config.vocab_size, seed=1, num_hidden_layers=1)
    filled = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **{CACHE_ARGUMENT: filled})
    bare = {"max_new_tokens": 2, "pad_token_id": inputs["pad_token_id"]}
    cases = {
        "two models": (ContrastiveDecodingContrast(model, other), inputs, "one model"),
        "another model": (CTDContrast(other, torch.randn(4, 32)), inputs, "built on another model"),
        "inputs_embeds": (contrast, {**bare, "inputs_embeds": model.get_input_embeddings()(inputs["input_ids"]),
                                     "attention_mask": inputs["attention_mask"]}, "`inputs_embeds`"),
        "cache_implementation": (contrast, {**inputs, "cache_implementation": "static"}, "`cache_implementation`"),
        "cache": (contrast, {**inputs, CACHE_ARGUMENT: filled}, f"`{CACHE_ARGUMENT}`"),
        "empty prompt": (contrast, {**bare, "input_ids": torch.zeros((1, 0), dtype=torch.long)}, "prompt length"),
        "use_cache": (contrast, {**inputs, "use_cache": False}, "use_cache=False"),
        "record beams": (ContrastProcessor(contrast, OriginalPredictions()), {**inputs, "num_beams": 2},
                         "beam search"),
    }
    for case, (refused, options, words) in cases.items():
        with pytest.raises(ValueError, match=words) as direct:
            generate_doubled(model, refused, **options)
        with pytest.raises(ValueError) as hooked:
            model.generate(**options, custom_generate=ctd_hf.custom_generate, contrast=refused)
        assert str(hooked.value) == str(direct.value), case


def test_callable_fills_the_record_of_a_processor(lively):
    model, contrast, inputs = lively
    expected = OriginalPredictions()
    generate_doubled(model, ContrastProcessor(contrast, expected), **inputs, do_sample=False)
    for backend in BACKENDS:
        record = OriginalPredictions()
        model.generate(**inputs, do_sample=False, custom_generate=ctd_hf.custom_generate,
                       contrast=ContrastProcessor(contrast, record), backend=backend)
        assert len(record.steps) == len(expected.steps) == inputs["max_new_tokens"], backend
        assert all(torch.equal(a[0], b[0]) and torch.allclose(a[1], b[1]) for a, b in zip(record.steps, expected.steps))


@pytest.fixture
def prefix_dir(tmp_path, tiny_model_dir):
    """A prefix folder as ``CTDTrainer.save_model`` writes it (peft's files and card, ``ctd_hf.json``)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    torch.manual_seed(0)
    trainer = CTDTrainer(model=add_soft_prefix(model, num_virtual_tokens=4, init="random"),
                         args=CTDConfig(output_dir=str(tmp_path / "run"), report_to="none"),
                         data_collator=RightPaddingCollator(0))
    trainer.save_model(str(tmp_path / "prefix"))
    return tmp_path / "prefix"


def test_exported_folder_decodes_ctd(prefix_dir, tiny_model_dir, tokenizer, capsys):
    main(["export-hub", str(prefix_dir), "--beta", "0.5"])
    assert "custom_generate" in capsys.readouterr().out
    assert {path.name for path in (prefix_dir / "custom_generate").iterdir()} >= {"generate.py", "requirements.txt"}
    assert (prefix_dir / "custom_generate" / "requirements.txt").read_text() == "ctd_hf\n"
    card = ModelCard.load(prefix_dir / "README.md")
    assert "custom_generate" in card.data.tags and card.data.library_name == "peft"
    main(["export-hub", str(prefix_dir), "--beta", "0.5"])  # again: one usage section, the rest of the card kept
    text = (prefix_dir / "README.md").read_text()
    assert text.count("<!-- ctd-hf export-hub -->") == 1 and "Model Card for Model ID" in text

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer.pad_token = tokenizer.eos_token
    inputs = tokenizer(["Name three colours.", "What is the capital of France? Answer:"], return_tensors="pt",
                       padding=True, padding_side="left")
    options = dict(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    for beta in (0.5, 2.0):
        expected = generate_doubled(model, CTDContrast(model, prefix_dir, strength=beta), **options)
        extra = {} if beta == 0.5 else {"strength": beta}  # 0.5 is the exported default
        output = model.generate(**options, custom_generate=str(prefix_dir), trust_remote_code=True, **extra)
        assert torch.equal(output, expected)
    assert not torch.equal(model.generate(**options), expected)  # beta 2 changes the answers
    with pytest.raises(ValueError, match="trust_remote_code"):
        model.generate(**options, custom_generate=str(prefix_dir), trust_remote_code=False)


def test_export_refuses_what_is_not_a_prefix(tmp_path, tiny_model_dir):
    with pytest.raises(AdapterMismatchError, match="does not exist"):
        export_custom_generate(tmp_path)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                          LoraConfig(task_type=TaskType.CAUSAL_LM))
    lora.save_pretrained(tmp_path / "lora")
    with pytest.raises(AdapterMismatchError, match="LORA adapter"):
        export_custom_generate(tmp_path / "lora")


class Collect:
    """A streamer that keeps every tensor it is given, and whether it was ended."""

    def __init__(self) -> None:
        self.tokens, self.ended = [], False

    def put(self, value: torch.Tensor) -> None:
        self.tokens.append(value.reshape(-1))

    def end(self) -> None:
        self.ended = True


def test_streamers_receive_the_tokens(prefix_dir, tiny_model_dir, lively):
    """0.2 and 0.3: generate(streamer=...) with the callable custom_generate streamed nothing but the prompt
    (generate() does not hand a callable custom_generate its streamer)."""
    model, contrast, inputs = lively
    one = {**{key: value[:1] for key, value in inputs.items() if key != "max_new_tokens" and key != "pad_token_id"},
           "max_new_tokens": 6, "pad_token_id": inputs["pad_token_id"], "do_sample": False}
    expected = generate_doubled(model, contrast, **one)
    streamer = Collect()
    model.generate(**one, custom_generate=ctd_hf.custom_generate, contrast=contrast, streamer=streamer)
    assert torch.equal(torch.cat(streamer.tokens), expected[0]) and streamer.ended
    with pytest.raises(ValueError, match="beam search"):
        model.generate(**one, custom_generate=ctd_hf.custom_generate, contrast=contrast, streamer=Collect(),
                       num_beams=2)
    streamer = Collect()
    with pytest.warns(FutureWarning, match="token_streamer"):  # the deprecated way still streams
        model.generate(**one, custom_generate=ctd_hf.custom_generate, contrast=contrast, token_streamer=streamer)
    assert torch.equal(torch.cat(streamer.tokens), expected[0]) and streamer.ended
    with pytest.raises(ValueError, match="one streamer"), pytest.warns(FutureWarning):
        model.generate(**one, custom_generate=ctd_hf.custom_generate, contrast=contrast, streamer=Collect(),
                       token_streamer=Collect())
    export_custom_generate(prefix_dir, strength=0.5)
    tiny = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    options = {**one, "max_new_tokens": 4}
    expected = generate_doubled(tiny, CTDContrast(tiny, prefix_dir, strength=0.5), **options)
    streamer = Collect()
    tiny.generate(**options, custom_generate=str(prefix_dir), trust_remote_code=True, streamer=streamer)
    assert torch.equal(torch.cat(streamer.tokens), expected[0]) and streamer.ended


def test_a_torn_exported_file_names_the_fix(prefix_dir, tiny_model_dir):
    """0.3: generate.py cut short (a failed upload or copy) raised a bare SyntaxError from transformers' loader."""
    export_custom_generate(prefix_dir)
    path = prefix_dir / "custom_generate" / "generate.py"
    text = path.read_text()
    path.write_text(text[: text.index("# ctd-hf prefix file adapter_model") + 200])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with pytest.raises(RuntimeError, match=r"incomplete or altered: its copy of adapter_model.safetensors.*export-hub"):
        model.generate(input_ids=torch.tensor([[1, 5, 7]]), max_new_tokens=2, custom_generate=str(prefix_dir),
                       trust_remote_code=True)
