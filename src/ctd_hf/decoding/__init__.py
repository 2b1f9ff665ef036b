"""Contrastive decoding: what is contrasted (``contrasts``), the two executors that run it inside ``generate()``, the
methods that name a contrast and its settings, and the engines that decode with them.

- ``contrasts``: :class:`Contrast` and its kinds, CTD (the model with a tuned soft prefix; ``LoRAContrast`` for a
  LoRA correction), Instructive Decoding (the model given a noisy instruction) and Contrastive Decoding (an amateur).
- ``stream``: the stream executor, :class:`ContrastProcessor`, a ``LogitsProcessor`` whose second view keeps its own
  KV cache; ``processors`` names it per method (``CTDProcessor``...).
- ``doubled``: the doubled executor, :func:`generate_doubled`: both views in one forward of 2B rows per step.
- ``layout``: left padding, position ids, prefix placement and the position limit, shared by every executor.
- ``likelihood``: contrasted log-probabilities of given continuations (multiple-choice scoring).
- ``recording``: the original model's predictions beside the contrasted ones (token-change analysis).
- ``noise``: Instructive Decoding's noisy instructions.
- ``methods``: the registry of decoding methods (od, id, cd, ctd, ctd-lora), each a declared spec that binds to a
  model and gives a batch its contrast.
- ``engine``: the :class:`Engine` protocol the jobs call, and transformers' engine (``generate()`` on an executor).
- ``answers``: answering chat messages with a bound method on an engine (``GenerationSettings``, prompt lengths).
"""
