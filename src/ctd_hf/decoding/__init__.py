"""Contrastive decoding: what is contrasted (``contrasts``) and the two executors that run it inside ``generate()``.

- ``contrasts``: :class:`Contrast` and its kinds, CTD (the model with a tuned soft prefix; ``LoRAContrast`` for a
  LoRA correction), Instructive Decoding (the model given a noisy instruction) and Contrastive Decoding (an amateur).
- ``stream``: the stream executor, :class:`ContrastProcessor`, a ``LogitsProcessor`` whose second view keeps its own
  KV cache; ``processors`` names it per method (``CTDProcessor``...).
- ``doubled``: the doubled executor, :func:`generate_doubled`: both views in one forward of 2B rows per step.
- ``layout``: left padding, position ids and prefix placement shared by both executors.
- ``likelihood``: contrasted log-probabilities of given continuations (multiple-choice scoring).
- ``recording``: the original model's predictions beside the contrasted ones (token-change analysis).
- ``noise``, ``methods``, ``answers``: noisy instructions, the method registry (od, id, cd, ctd: the one factory from
  a method to its contrast) and answering chat messages with one of them (``GenerationSettings``, prompt lengths).
"""
