"""The settings of ``ctd-hf serve`` (apart from the server, so that the command line declares them without importing
vLLM)."""

from __future__ import annotations

from dataclasses import dataclass

from ...prompts import prompt_format_setting
from ...settings import check_settings, positive_int, setting


@dataclass(kw_only=True)
class ServeSettings:
    """Where the server listens and how it renders chat prompts."""

    host: str = setting("127.0.0.1", help="Address to listen on.")
    port: int = setting(8000, check=positive_int, help="Port to listen on.")
    served_model_name: str | None = setting(None, help="The model name clients send (default: the model argument).")
    prompt_format: str = prompt_format_setting()
    max_tokens: int = setting(256, check=positive_int, help="max_tokens of a request that gives none.")
    cache_methods: int = setting(8, check=positive_int, help="Bound methods (loaded prefixes) kept in memory.")

    def __post_init__(self) -> None:
        check_settings(self)
