"""Integrations with callers outside ctd_hf: the lm-evaluation-harness model ``ctd_hf`` (``lm_eval``),
transformers' ``custom_generate`` hook (``custom_generate``) and the folder ``ctd-hf export-hub`` writes so that a
prefix decodes from the Hub with ``model.generate(custom_generate=REPO, trust_remote_code=True)`` (``hub``).

They sit above ``decoding`` (as ``evaluation`` and ``synthesis`` do) and only adapt its contrasts and executors to
another caller's interface; ``lm_eval`` needs the optional extra ``ctd_hf[lm-eval]``.
"""
