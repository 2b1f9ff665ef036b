"""Evaluation: benchmarks as declared tasks with their per-instance scorers (``tasks``), the resumable runner and its
``EvalSettings`` (``runner``), offline metric modules (``metrics``, loaded by ``scoring``), paired statistics
(``statistics``), token-change analysis (``analysis``) and reports (``report``)."""
