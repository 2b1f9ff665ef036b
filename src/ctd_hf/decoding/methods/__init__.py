"""Decoding methods as declared specs, registered once by name: ``od`` (plain), ``id`` (Instructive Decoding), ``cd``
(Contrastive Decoding, CoDIT's), ``ctd`` and ``ctd-lora`` (CTD with a prefix or a LoRA adapter).

One module per method, each a frozen spec class (its settings, flags and resume key) and the class it binds to a
model (what it loads, and the :class:`~ctd_hf.Contrast` of a batch); ``base`` holds what they share and the registry
(:data:`METHODS`, :func:`register_method`). The command line, evaluation, synthesis, lm-eval and the engines read the
registry and the specs' fields; none of them asks a method its name.
"""

from .base import (ALIASES, BACKENDS, METHODS, BoundMethod, ContrastMethod, DecodingMethod, method_class,
                   method_from_settings, method_settings_names, register_method)
from .plain import ODMethod
from .instructive import IDMethod
from .contrastive import CDMethod
from .ctd import CTDMethod, prefix_fingerprint
from .lora import CTDLoRAMethod

__all__ = ["ALIASES", "BACKENDS", "METHODS", "BoundMethod", "CDMethod", "CTDLoRAMethod", "CTDMethod", "ContrastMethod",
           "DecodingMethod", "IDMethod", "ODMethod", "method_class", "method_from_settings", "method_settings_names", "prefix_fingerprint",
           "register_method"]
