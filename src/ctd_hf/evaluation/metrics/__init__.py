"""Offline ``evaluate`` metric scripts, one folder each; load them with :func:`ctd_hf.load_metric`."""
