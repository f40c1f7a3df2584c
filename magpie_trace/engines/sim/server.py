"""The head's HTTP API, compatible with vLLM's OpenAI server where magpie-trace touches it.

Routes: POST /v1/completions and /v1/chat/completions (streaming SSE or not), GET /health,
/v1/models, /metrics, /version, POST /tokenize and /detokenize (a token is a whitespace word),
and, only with a profile dir (vLLM mounts them only when its profiler is configured), POST
/start_profile and /stop_profile. Requests name the model by one of its served names.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from magpie_trace.engines.sim import SIM_VERSION
from magpie_trace.engines.sim.disagg import HandoffError, Role
from magpie_trace.engines.sim.generate import TokenEngine, token_text
from magpie_trace.engines.sim.kvlink import KvError
from magpie_trace.engines.sim.metrics import Metrics
from magpie_trace.engines.sim.prefix import PrefixCache
from magpie_trace.engines.sim.profiler import Profiler, ProfilerBusy

DEFAULT_MAX_TOKENS = 16
MAX_MODEL_LEN = 131072
MAX_VOCAB = 1 << 20
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_PLACEHOLDER = b"\\u0000"  # how orjson writes "\x00", the spot where a token's text goes


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _error_body(message: str, status: int) -> bytes:
    kind = {400: "BadRequestError", 404: "NotFoundError", 409: "ConflictError"}.get(status, "Error")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}})


def _error(message: str, status: int) -> web.Response:
    return web.Response(status=status, body=_error_body(message, status), content_type="application/json")


def _words(text: Any, where: str) -> list[str]:
    if not isinstance(text, str):
        raise BadRequest(f"{where} must be a string")
    return text.split()


def _message_words(messages: Any) -> list[str]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    words: list[str] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    words += _words(part.get("text", ""), "content[].text")
        elif content is not None:
            words += _words(content, "message content")
    return words


def _prompt(body: dict[str, Any], chat: bool) -> list[Any]:
    """The prompt's tokens: whitespace words of the text, or the token ids as given."""
    if chat:
        tokens: list[Any] = _message_words(body.get("messages"))
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            tokens = _words(prompt, "prompt")
        elif isinstance(prompt, list) and all(type(t) is int for t in prompt):
            tokens = prompt
        else:
            raise BadRequest("prompt must be a string or a list of token ids "
                             "(the sim serves one prompt per request)")
    if not tokens:
        raise BadRequest("the prompt cannot be empty")
    return tokens


def _int_field(body: dict[str, Any], name: str, default: int, minimum: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if type(value) is not int or value < minimum:
        raise BadRequest(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class _Sse:
    """A streaming response: each token is one SSE chunk, written to the socket at once."""

    def __init__(self, response: web.StreamResponse, base: dict[str, Any], chat: bool,
                 prompt_tokens: int, include_usage: bool) -> None:
        self._response = response
        self._chat = chat
        choice: dict[str, Any]
        if chat:
            choice = {"index": 0, "delta": {"content": "\0"}, "logprobs": None, "finish_reason": None}
        else:
            choice = {"index": 0, "text": "\0", "logprobs": None, "finish_reason": None,
                      "stop_reason": None}
        self._head, self._tail = self._template(base, choice)
        choice["finish_reason"] = "length"
        self._final_head, self._final_tail = self._template(base, choice)
        self._role = b""
        if chat:
            role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                    "finish_reason": None}
            self._role = b"data: " + orjson.dumps({**base, "choices": [role]}) + b"\n\n"
        self._base = base
        self._prompt_tokens = prompt_tokens
        self._include_usage = include_usage

    @staticmethod
    def _template(base: dict[str, Any], choice: dict[str, Any]) -> tuple[bytes, bytes]:
        head, tail = orjson.dumps({**base, "choices": [choice]}).split(_PLACEHOLDER)
        return b"data: " + head, tail + b"\n\n"

    async def token(self, index: int, final: bool) -> None:
        text = token_text(index).encode()
        if not final:
            data = self._head + text + self._tail
        else:
            data = self._final_head + text + self._final_tail
            if self._include_usage:
                tokens = index + 1
                usage = {"prompt_tokens": self._prompt_tokens, "total_tokens":
                         self._prompt_tokens + tokens, "completion_tokens": tokens}
                data += b"data: " + orjson.dumps({**self._base, "choices": [], "usage": usage})
                data += b"\n\n"
            data += b"data: [DONE]\n\n"
        if index == 0:
            data = self._role + data
        await self._response.write(data)
        if final:
            await self._response.write_eof()


class _Collect:
    """A non-streaming response: nothing is sent until the last token."""

    async def token(self, index: int, final: bool) -> None:
        return None


class HeadServer:
    def __init__(self, model: str, engine: TokenEngine, metrics: Metrics,
                 profiler: Profiler | None, role: Role | None = None,
                 served_names: tuple[str, ...] = ()) -> None:
        self.model = model
        self.names = served_names or (model,)
        self.prefix_cache = PrefixCache()
        self._vocab: dict[str, int] = {}
        self._words: list[str] = []
        self.engine = engine
        self.metrics = metrics
        self.profiler = profiler
        self.role = role  # prefill / decode behind a PD router, or None
        self.created = int(time.time())

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics_text)
        app.router.add_get("/version", self.version)
        # What sglang-router reads of each worker at registration (its model id).
        app.router.add_get("/server_info", self.server_info)
        app.router.add_get("/model_info", self.model_info)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/detokenize", self.detokenize)
        if self.profiler is not None:
            app.router.add_post("/start_profile", self.start_profile)
            app.router.add_post("/stop_profile", self.stop_profile)
        return app

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        arrival, arrival_ns = loop.time(), time.time_ns()  # TTFT counts from here
        try:
            body = orjson.loads(await request.read())
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object")
            model = body.get("model", self.names[0])
            if model not in self.names:
                raise BadRequest(f"The model `{model}` does not exist.", 404)
            prompt = _prompt(body, chat)
            prompt_tokens = len(prompt)
            max_tokens = _int_field(body, "max_tokens", DEFAULT_MAX_TOKENS, 1)
            if chat:
                max_tokens = _int_field(body, "max_completion_tokens", max_tokens, 1)
            if _int_field(body, "n", 1, 1) != 1:
                raise BadRequest("the sim serves n = 1 only")
            stream = body.get("stream") is True
            options = body.get("stream_options")
            if options is not None and not stream:
                raise BadRequest("Stream options can only be defined when `stream=True`.")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            request_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
            handoff = self.role.parse(body, request_id) if self.role is not None else None
        except orjson.JSONDecodeError as exc:
            return _error(f"the request body is not JSON: {exc}", 400)
        except BadRequest as exc:
            return _error(str(exc), exc.status)
        except HandoffError as exc:
            return _error(str(exc), 400)
        self.metrics.prefix_cache_queries += prompt_tokens
        self.metrics.prefix_cache_hits += self.prefix_cache.lookup_and_insert(prompt)
        base = {"id": request_id, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": model}
        response: web.StreamResponse | None = None
        if stream:  # the headers go out now, as vLLM's StreamingResponse sends them before any token
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                                   "Cache-Control": "no-cache"})
            await response.prepare(request)
        first = None
        if self.role is not None:
            max_tokens = self.role.max_tokens(handoff, max_tokens)
            try:
                first = await self.role.admit(handoff, arrival + self.engine.ttft)
            except KvError as exc:
                message = f"KV transfer failed: {exc}"
                if response is None:
                    return _error(message, 503)
                # Past the headers an error is an event of the stream, as vLLM sends it.
                with contextlib.suppress(ConnectionError):
                    await response.write(b"data: " + _error_body(message, 503) + b"\n\ndata: [DONE]\n\n")
                    await response.write_eof()
                return response
        if response is not None:
            output = _Sse(response, base, chat, prompt_tokens, include_usage)
            await self.engine.submit(request_id, prompt_tokens, max_tokens, output, arrival,
                                     arrival_ns, first)
            return response
        await self.engine.submit(request_id, prompt_tokens, max_tokens, _Collect(), arrival,
                                 arrival_ns, first)
        text = "".join(token_text(i) for i in range(max_tokens))
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + max_tokens,
                 "completion_tokens": max_tokens}
        if chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "logprobs": None, "finish_reason": "length"}
            base["object"] = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length",
                      "stop_reason": None}
        payload = {**base, "choices": [choice], "usage": usage}
        if self.role is not None:
            payload.update(self.role.response_fields(handoff))
        return web.Response(body=orjson.dumps(payload), content_type="application/json")

    async def health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def models(self, request: web.Request) -> web.Response:
        cards = [{"id": name, "object": "model", "created": self.created, "owned_by": "vllm",
                  "root": self.model, "parent": None, "max_model_len": MAX_MODEL_LEN,
                  "permission": []} for name in self.names]
        return web.Response(body=orjson.dumps({"object": "list", "data": cards}),
                            content_type="application/json")

    async def tokenize(self, request: web.Request) -> web.Response:
        """vLLM's /tokenize: {"prompt"} or {"messages"} -> {"count", "max_model_len", "tokens"}."""
        try:
            body = orjson.loads(await request.read())
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object")
            if "messages" in body:
                words = _message_words(body["messages"])
            else:
                words = _words(body.get("prompt"), "prompt")
            if len(self._vocab) + len(words) > MAX_VOCAB:
                raise BadRequest("the sim's vocabulary is full")
            ids = [self._vocab.setdefault(word, len(self._vocab)) for word in words]
            for word, index in zip(words, ids):
                if index == len(self._words):
                    self._words.append(word)
        except orjson.JSONDecodeError as exc:
            return _error(f"the request body is not JSON: {exc}", 400)
        except BadRequest as exc:
            return _error(str(exc), exc.status)
        payload = {"count": len(ids), "max_model_len": MAX_MODEL_LEN, "tokens": ids, "token_strs": None}
        return web.Response(body=orjson.dumps(payload), content_type="application/json")

    async def detokenize(self, request: web.Request) -> web.Response:
        """vLLM's /detokenize: {"tokens"} -> {"prompt"} (the words joined by single spaces)."""
        try:
            body = orjson.loads(await request.read())
            tokens = body.get("tokens") if isinstance(body, dict) else None
            if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
                raise BadRequest("tokens must be a list of integers")
            if any(not 0 <= t < len(self._words) for t in tokens):
                raise BadRequest("unknown token id")
        except orjson.JSONDecodeError as exc:
            return _error(f"the request body is not JSON: {exc}", 400)
        except BadRequest as exc:
            return _error(str(exc), exc.status)
        text = " ".join(self._words[t] for t in tokens)
        return web.Response(body=orjson.dumps({"prompt": text}), content_type="application/json")

    async def metrics_text(self, request: web.Request) -> web.Response:
        return web.Response(text=self.metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def version(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"version": SIM_VERSION}),
                            content_type="application/json")

    async def server_info(self, request: web.Request) -> web.Response:
        mode = self.role.role if self.role is not None else "null"
        info = {"model_path": self.model, "served_model_name": self.model, "version": SIM_VERSION,
                "disaggregation_mode": mode}
        return web.Response(body=orjson.dumps(info), content_type="application/json")

    async def model_info(self, request: web.Request) -> web.Response:
        info = {"model_path": self.model, "tokenizer_path": self.model, "is_generation": True}
        return web.Response(body=orjson.dumps(info), content_type="application/json")

    async def start_profile(self, request: web.Request) -> web.Response:
        assert self.profiler is not None
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            prefix = body.get("profile_prefix")
            if prefix is not None and (not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix)):
                raise BadRequest("profile_prefix must be 1-128 characters of [A-Za-z0-9._-], "
                                 "starting with a letter or digit")
            delay = _int_field(body, "delay_iterations", 0, 0)
            max_steps = _int_field(body, "max_iterations", 0, 0)
        except orjson.JSONDecodeError as exc:
            return _error(f"the request body is not JSON: {exc}", 400)
        except BadRequest as exc:
            return _error(str(exc), exc.status)
        try:
            await self.profiler.start(prefix, delay, max_steps)
        except ProfilerBusy:
            return _error("A profiling session is already active. Call /stop_profile before "
                          "starting another session.", 409)
        return web.Response()

    async def stop_profile(self, request: web.Request) -> web.Response:
        assert self.profiler is not None
        await self.profiler.stop()
        return web.Response()
