"""The lm-evaluation-harness model ``ctd_hf``: every harness task with any registered decoding method (od, id, cd,
ctd, ctd-lora, or one of yours).

It is the harness's ``HFLM`` (model loading, tokenisation, batching, ``--limit``, ``--use_cache``, chat templates)
with two things replaced for the contrastive methods:

- generation (``generate_until``): ``HFLM`` builds its batch (left-padded, stop sequences, ``max_gen_toks``) and
  calls ``generate()``, which runs the contrast through :func:`ctd_hf.custom_generate` on the doubled executor (ctd,
  id) or the stream executor (cd, or ``backend=stream``);
- scoring (``loglikelihood``, multiple choice): every continuation token is scored under the contrasted distribution
  ``log_softmax(z - strength * z~)`` (teacher forcing, :func:`~ctd_hf.decoding.likelihood.continuation_log_probs`),
  as the CTD paper scores MMLU. ``loglikelihood_rolling`` (perplexity tasks) has no contrastive version.

``method=od`` is ``HFLM`` unchanged. Instructive Decoding needs the instruction inside the harness's prompt; it is
taken to be the context's first paragraph (up to the first blank line, where the harness puts a task's
``description``), the rest being the task input that every noise keeps: ``opposite`` puts its fixed sentence in place
of that paragraph, ``none`` drops it. A context without a blank line is all task input (``opposite`` then prepends its
sentence; ``none`` leaves the prompt unchanged, so ID only rescales the logits). For generation the context is read
back from the harness's (possibly left-truncated) tokens.

Registration: importing this module registers ``ctd_hf`` with ``lm_eval.api.registry.register_model``, the only way
lm-eval 0.4.x finds a model outside its source tree (its registry accepts entry points but 0.4.13 never scans them;
``setup.cfg`` declares the ``lm_eval.models`` entry point for versions that do). In Python, import it before
``lm_eval.simple_evaluate(model="ctd_hf", ...)``; on the command line, ``ctd-hf-lm-eval`` (:func:`main`) is the
``lm_eval`` command with the model registered::

    ctd-hf-lm-eval --model ctd_hf --model_args pretrained=default,method=ctd,prefix=runs/prefix,beta=0.3 \\
        --tasks mmlu --batch_size 8
"""

from __future__ import annotations

from typing import Any

import torch
from lm_eval.__main__ import cli_evaluate
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator
from tqdm.auto import tqdm

from ..decoding.engine import executor
from ..decoding.layout import pad_left
from ..decoding.likelihood import continuation_log_probs
from ..decoding.methods import ContrastMethod, method_from_settings, method_settings_names
from ..models import resolve_model_path
from .custom_generate import custom_generate

Request = tuple[tuple[str, str], list[int], list[int]]  # ((context, continuation), their token ids)


@register_model("ctd_hf")
class CTDLM(HFLM):
    """``HFLM`` decoding and scoring with a registered decoding method.

    Args (``--model_args`` names; the rest go to ``HFLM``):
        pretrained: model folder or hub name; ``default`` is the embedded SmolLM2-135M-Instruct.
        method: a registered method (``od``, ``id``, ``cd``, ``ctd``, ``ctd-lora``...).
        further: the method's settings by their field names (``ctd``: ``prefix``, ``strength``; ``id``: ``strength``,
            ``noise``, ``noise_rate``; ``cd``: ``amateur``, ``strength``, ``plausibility``, ``amateur_temperature``;
            ``backend``: ``auto``, ``doubled`` or ``stream``); ``beta`` is the paper's name for ``strength``.
    """

    def __init__(self, pretrained: str = "default", method: str = "od", **kwargs: Any) -> None:
        given = {name: kwargs.pop(name) for name in list(kwargs) if name in method_settings_names()}
        if given.get("noise", "") is None:
            given["noise"] = "none"  # the harness reads `noise=none` in --model_args as None
        spec = method_from_settings(method, given)  # checked before the model loads
        contrastive = isinstance(spec, ContrastMethod)
        if contrastive and str(kwargs.get("batch_size", 1)).startswith("auto"):
            raise ValueError(f"batch_size=auto sizes batches for one forward of the plain model; method {spec.name} "
                             "runs two views per row: pass an integer batch_size.")
        super().__init__(pretrained=resolve_model_path(pretrained) if isinstance(pretrained, str) else pretrained,
                         **kwargs)
        if contrastive and self.backend != "causal":
            raise ValueError(f"Method {spec.name} needs a decoder-only model (backend=causal), got {self.backend}.")
        self.method = spec.bind(self.model, self.tokenizer)  # reads the prefix, loads the amateur beside the model
        self.contrastive = contrastive

    def _model_generate(
        self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs: Any
    ) -> torch.Tensor:
        if not self.contrastive:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        mask = generation_kwargs["attention_mask"]
        texts = [self.tokenizer.decode(row[keep.bool()].tolist(), skip_special_tokens=True)
                 for row, keep in zip(context, mask)]
        seconds = [self.method.second_context(text) for text in texts]
        second = None
        if seconds[0] is not None:
            second = self.tok_batch_encode(seconds, left_truncate_len=self.max_length - (max_length - context.shape[1]))
            second = tuple(tensor.to(self.device) for tensor in second)
        contrast = self.method.contrast(second)
        return super()._model_generate(context, max_length, stop, custom_generate=custom_generate,
                                       contrast=contrast, backend=executor(contrast, self.method.backend),
                                       **generation_kwargs)

    def _loglikelihood_tokens(
        self, requests: list[Request], disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list[tuple[float, bool]]:
        if not self.contrastive:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        # Longest first, as HFLM orders them; no grouping by context: the second view differs per method.
        batches = Collator(requests, sort_fn=lambda request: (-len(request[1]) - len(request[2]),
                                                             tuple(request[1] + request[2])))
        results = []
        progress = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                        desc=f"Running loglikelihood requests ({self.method.name})")
        for batch in batches.get_batched(n=override_bs or self.batch_size):
            continuations = [continuation for _, _, continuation in batch]
            contexts = [self._fit(context, continuation) for (_, context, continuation) in batch]
            scores = continuation_log_probs(self.method.contrast(self._second_contexts(batch)), contexts,
                                            continuations)
            for (request, _, _), score in zip(batch, scores):
                answer = (float(score.log_probs.sum()), score.greedy)
                results.append(answer)
                self.cache_hook.add_partial("loglikelihood", request, answer)
                progress.update(1)
        progress.close()
        return batches.get_original(results)

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        if self.contrastive:
            raise NotImplementedError(
                f"Method {self.method.name} scores continuations of a context; rolling log-likelihood (perplexity "
                "tasks such as wikitext) has no context to contrast. Run those tasks with method=od."
            )
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    def _fit(self, context: list[int], continuation: list[int]) -> list[int]:
        """The context, left-truncated as HFLM truncates it so that context + continuation fit ``max_length + 1``."""
        if len(continuation) > self.max_length:
            raise ValueError(f"A continuation of {len(continuation)} tokens does not fit max_length={self.max_length}.")
        return context[-(self.max_length + 1 - len(continuation)):]

    def _second_contexts(self, batch: list[Request]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The batch's second-view contexts (see :meth:`second_context`), encoded as the harness encodes contexts,
        left-padded; None when the method's second view reads the same contexts."""
        encoded = []
        for (context, continuation), _, tokens in batch:
            second = self.method.second_context(context)
            if second is None:
                return None
            ids = self._encode_pair(second, continuation)[0] if second.strip() else [self.prefix_token_id]
            encoded.append(self._fit(ids, tokens))
        padded = pad_left(self.tokenizer, encoded).to(self.device)
        return padded["input_ids"], padded["attention_mask"]


def main() -> None:
    """The ``lm_eval`` command line (same arguments) with the ``ctd_hf`` model registered: ``ctd-hf-lm-eval``."""
    cli_evaluate()
