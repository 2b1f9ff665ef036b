"""Contrastive tuning: creating the soft prefix for training (``prefix``; the saved format is
:mod:`ctd_hf.adapter`), SFT data (``data``), ``CTDConfig`` (``config``), ``CTDTrainer`` (``trainer``, a
``transformers.Trainer`` whose loss is :func:`ctd_hf.contrastive_loss`) and a resumable tuning run from declared
settings (``tuning``: ``TuneSettings``, ``tune``)."""
