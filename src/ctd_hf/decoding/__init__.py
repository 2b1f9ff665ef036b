"""Contrastive decoding: what is contrasted (``contrasts``) and the two executors that run it inside ``generate()``.

- ``contrasts``: :class:`Contrast` and its three kinds, CTD (the model with a tuned soft prefix), Instructive Decoding
  (the model given a noisy instruction) and Contrastive Decoding (an amateur model).
- ``stream``: the stream executor, :class:`ContrastProcessor`, a ``LogitsProcessor`` whose second view keeps its own
  KV cache; ``processors`` names it per method (``CTDProcessor``...).
- ``doubled``: the doubled executor, :func:`generate_doubled`: both views in one forward of 2B rows per step.
- ``layout``: left padding, position ids and prefix placement shared by both executors.
- ``noise``, ``methods``, ``batch``: noisy instructions, the method registry (od, id, cd, ctd) and decoding a batch
  of chat messages with one of them.
"""
