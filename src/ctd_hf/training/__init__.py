"""Contrastive tuning: the soft prefix (``prefix``), SFT data (``data``), ``CTDConfig`` (``config``) and
``CTDTrainer`` (``trainer``), a ``transformers.Trainer`` whose loss is :func:`ctd_hf.contrastive_loss`."""
