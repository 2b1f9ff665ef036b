"""Evaluation: benchmarks as declared tasks (``tasks``), the resumable runner (``runner``), metrics and scoring
(``metrics``, ``scoring``), token-change analysis (``analysis``) and reports (``report``, ``plots``)."""
