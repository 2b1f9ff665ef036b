"""``ctd-hf serve``: an OpenAI-compatible server (``/v1/completions``, ``/v1/chat/completions``, streaming) that
answers each request with the decoding method its body names: od, id, ctd, cd or any registered method with a
portable contrast.

It is a small FastAPI app on vLLM's ``AsyncLLM`` (the engine core in its own process, the pair scheduler and the
logits processor of :mod:`ctd_hf.integrations.vllm`), not stock ``vllm serve``: a contrasted request is two engine
requests (the prompt and its second view: Instructive Decoding's noisy prompt, which needs the instruction apart from
the task input; CTD's prefix rows and the prompt's embeddings), and stock ``vllm serve`` has no way to turn one HTTP
request into two, or to build either second view from a method's settings. Besides the OpenAI fields, a body may
hold ``method`` and that method's settings by name (``strength`` or ``beta``, ``prefix``, ``noise``, ``amateur``...).
A malformed request gets a 400 naming the problem; nothing else is affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import torch

from ...decoding.layout import check_positions, pad_left
from ...decoding.methods import BoundMethod, DecodingMethod, method_from_settings, method_settings_names
from ...models import load_skeleton
from ...prompts import encode_prompt, format_prompt
from .compat import (AsyncEngineArgs, AsyncLLM, FastAPI, HTTPRequest, JSONResponse, SamplingParams, StreamingResponse,
                     TokensPrompt, require_vllm)
from .engine import contrasted_requests, engine_arguments
from .requests import check_contrasted
from .settings import ServeSettings

logger = logging.getLogger(__name__)
# OpenAI's request fields this server follows; anything else that is not a method setting is refused by name.
_COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stream", "stream_options", "n", "stop",
           "user", "method", "return_token_ids"}
_FIELDS = {"completions": _COMMON | {"prompt"}, "chat": _COMMON | {"messages", "max_completion_tokens"}}


class BadRequest(ValueError):
    """A request the server refuses with HTTP 400, naming the problem."""


class Server:
    """The engine and what requests share: the model's skeleton (tokenizer, input embeddings: the weights are in the
    engine), the bound methods requests named (a prefix read once), the settings."""

    def __init__(self, model: str, dtype: str, settings: ServeSettings, **engine_options: Any) -> None:
        require_vllm()
        self.settings = settings
        self.model, self.tokenizer = load_skeleton(model, dtype=dtype)
        self.name = settings.served_model_name or model
        arguments = engine_arguments(self.model, **engine_options)
        self.max_model_len = arguments["max_model_len"]
        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**arguments))
        self.bound: OrderedDict[DecodingMethod, BoundMethod] = OrderedDict()

    def bind(self, method: DecodingMethod) -> BoundMethod:
        if method not in self.bound:
            self.bound[method] = method.bind(self.model, self.tokenizer)
            while len(self.bound) > self.settings.cache_methods:
                self.bound.popitem(last=False)
        self.bound.move_to_end(method)
        return self.bound[method]

    # ------------------------------------------------------------------------------------------------ one request
    def plan(self, body: Any, kind: str) -> tuple[list[tuple[Any, SamplingParams]], DecodingMethod, bool]:
        """The engine requests of a request body (the first is the one answered), its method, and whether it
        streams; :class:`BadRequest` for anything the server cannot follow."""
        if not isinstance(body, dict):
            raise BadRequest("The request body is a JSON object.")
        unknown = sorted(set(body) - _FIELDS[kind] - method_settings_names())
        if unknown:
            raise BadRequest(f"Unknown field(s) {', '.join(unknown)}: this server follows the OpenAI fields "
                             f"{', '.join(sorted(_FIELDS[kind]))} and a method's settings (`method`, then e.g. "
                             "`strength`, `prefix`, `noise`).")
        if body.get("model", self.name) != self.name:
            raise BadRequest(f"This server serves {self.name!r}, not {body['model']!r}.")
        if body.get("n", 1) != 1:
            raise BadRequest("n must be 1: a contrasted request yields one answer; send the request n times with "
                             "different seeds.")
        settings = {key: value for key, value in body.items() if key in method_settings_names()}
        try:
            method = method_from_settings(str(body.get("method", "od")), settings)
            bound = self.bind(method)
        except (ValueError, TypeError, OSError) as error:
            raise BadRequest(str(error)) from None
        params = self._sampling_params(body)
        prompt, second = self._prompts(body, kind, bound)
        contrast = bound.contrast(None if second is None else self._padded(second))
        for ids in (prompt, second or []):
            try:
                check_positions(self.max_model_len, len(ids) + bound.prefix_length + params.max_tokens,
                                "The prompt", "shorten it or lower max_tokens", holder="server")
            except ValueError as error:
                raise BadRequest(str(error)) from None
        if contrast is None:
            return [(TokensPrompt(prompt_token_ids=prompt), params)], method, bool(body.get("stream"))
        try:
            check_contrasted(params)
            requests = contrasted_requests([prompt], contrast, params, self.model.dtype)
        except (ValueError, NotImplementedError) as error:
            raise BadRequest(str(error)) from None
        return requests, method, bool(body.get("stream"))

    def _sampling_params(self, body: dict) -> SamplingParams:
        options = {"max_tokens": body.get("max_tokens", body.get("max_completion_tokens", self.settings.max_tokens))}
        for key in ("temperature", "top_p", "top_k", "seed", "stop"):
            if body.get(key) is not None:
                options[key] = body[key]
        try:
            return SamplingParams(**options)
        except (ValueError, TypeError) as error:
            raise BadRequest(f"Sampling settings: {error}") from None

    def _prompts(self, body: dict, kind: str, bound: BoundMethod) -> tuple[list[int], list[int] | None]:
        """The prompt's token ids and its second view's (``None`` when the second view reads the prompt itself)."""
        tokenizer, prompt_format = self.tokenizer, self.settings.prompt_format
        if kind == "chat":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
                raise BadRequest("`messages` is a non-empty list of {role, content} objects.")
            try:
                ids = encode_prompt(format_prompt(messages, prompt_format, tokenizer), tokenizer, prompt_format)
                second = bound.second_message(messages[-1])
                second_ids = None if second is None else encode_prompt(
                    format_prompt([*messages[:-1], second], prompt_format, tokenizer), tokenizer, prompt_format)
            except (ValueError, KeyError, TypeError) as error:
                raise BadRequest(f"`messages`: {error}") from None
            return ids, second_ids
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and all(isinstance(token, int) for token in prompt):
            if bound.second_context("") is not None:
                raise BadRequest(f"Method {bound.name} reads the prompt's instruction: send `prompt` as text.")
            return prompt, None
        if not isinstance(prompt, str) or not prompt:
            raise BadRequest("`prompt` is a non-empty string (or a list of token ids).")
        second = bound.second_context(prompt)
        return tokenizer(prompt)["input_ids"], None if second is None else tokenizer(second)["input_ids"]

    def _padded(self, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = pad_left(self.tokenizer, [ids])
        return batch["input_ids"], batch["attention_mask"]

    async def run(self, requests: list[tuple[Any, SamplingParams]]) -> AsyncIterator[Any]:
        """Submit every engine request of one HTTP request and yield the first's outputs; the others are drained.
        However the caller stops (the answer ends, the client goes), every request is aborted."""
        ids = [f"ctd-hf-{uuid.uuid4().hex}" for _ in requests]
        streams = []
        for request_id, (prompt, params) in zip(ids, requests):
            (engine_input,) = await self.llm.renderer.render_cmpl_async([prompt])
            streams.append(self.llm.generate(engine_input, params, request_id))
        drains = [asyncio.create_task(_drain(stream)) for stream in streams[1:]]
        try:
            async for output in streams[0]:
                yield output
        finally:
            await streams[0].aclose()
            for drain in drains:
                drain.cancel()
            await self.llm.abort(ids)


async def _drain(stream: AsyncIterator[Any]) -> None:
    async for _ in stream:
        pass


def build_app(server: Server) -> Any:
    """The FastAPI app of ``server``; when it stops (SIGINT, SIGTERM), the engine's processes stop with it."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            server.llm.shutdown()

    app = FastAPI(title="ctd-hf serve", lifespan=lifespan)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "code": status}},
                            status_code=status)

    async def answer(request: HTTPRequest, kind: str) -> Any:
        try:
            body = await request.json()
        except json.JSONDecodeError as problem:
            return error(400, f"The request body is not JSON: {problem}.")
        try:
            requests, method, stream = server.plan(body, kind)
        except BadRequest as problem:
            return error(400, str(problem))
        reply = _Reply(server.name, kind, method, len(requests[0][0].get("prompt_token_ids") or []),
                       bool(body.get("return_token_ids")))
        if stream:
            return StreamingResponse(reply.stream(server.run(requests)), media_type="text/event-stream")
        last = None
        async for last in server.run(requests):
            pass
        return JSONResponse(reply.whole(last))

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest) -> Any:
        return await answer(request, "completions")

    @app.post("/v1/chat/completions")
    async def chat(request: HTTPRequest) -> Any:
        return await answer(request, "chat")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": server.name, "object": "model", "owned_by": "ctd_hf"}]}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    return app


class _Reply:
    """OpenAI's response objects for one request: whole, or as server-sent events."""

    def __init__(self, model: str, kind: str, method: DecodingMethod, prompt_tokens: int, token_ids: bool) -> None:
        self.id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        self.model, self.kind, self.method, self.prompt_tokens = model, kind, method, prompt_tokens
        self.token_ids = token_ids  # vLLM's `return_token_ids` extension: the answer's token ids beside its text
        self.created = int(time.time())

    def _choice(self, text: str, tokens: list[int], finish_reason: str | None, delta: bool = False,
                first: bool = True) -> dict:
        if self.kind == "completions":
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        else:
            content = {"role": "assistant", "content": text} if first else {"content": text}
            choice = {"index": 0, ("delta" if delta else "message"): content, "finish_reason": finish_reason}
        return {**choice, "token_ids": tokens} if self.token_ids else choice

    def _object(self, chunk: bool) -> str:
        return {"completions": "text_completion", "chat": "chat.completion.chunk" if chunk else "chat.completion"}[
            self.kind]

    def whole(self, output: Any) -> dict:
        answer = output.outputs[0]
        completion = len(answer.token_ids)
        return {"id": self.id, "object": self._object(False), "created": self.created, "model": self.model,
                "choices": [self._choice(answer.text, list(answer.token_ids), answer.finish_reason)],
                "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                          "total_tokens": self.prompt_tokens + completion},
                "ctd_hf": self.method.settings()}

    async def stream(self, outputs: AsyncIterator[Any]) -> AsyncIterator[str]:
        sent, tokens, first = "", 0, True
        async for output in outputs:
            answer = output.outputs[0]
            delta, sent = answer.text[len(sent):], answer.text
            new, tokens = list(answer.token_ids[tokens:]), len(answer.token_ids)
            if delta or new or answer.finish_reason:
                choice = self._choice(delta, new, answer.finish_reason, delta=True, first=first)
                chunk = {"id": self.id, "object": self._object(True), "created": self.created, "model": self.model,
                         "choices": [choice]}
                first = False
                yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"


def serve(model: str, dtype: str, settings: ServeSettings, **engine_options: Any) -> None:
    """Build the server and answer requests until interrupted (what ``ctd-hf serve`` runs)."""
    import uvicorn

    server = Server(model, dtype, settings, **engine_options)
    logger.info("Serving %s on http://%s:%d (POST /v1/completions, /v1/chat/completions)", server.name,
                settings.host, settings.port)
    uvicorn.run(build_app(server), host=settings.host, port=settings.port, log_level="warning")
