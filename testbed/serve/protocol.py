"""The OpenAI-compatible request bodies: validation into a :class:`GenerationRequest`.

Pure functions (no I/O): a body that cannot be served raises :class:`ApiError`, whose message
names the field, the value and what is accepted, and whose ``status`` is the HTTP status
(400 bad request, 404 unknown model).  Decoding is greedy: sampling parameters are accepted
for compatibility with existing clients and ignored (``temperature`` and ``top_p`` are
reported back in ``warnings`` when they ask for sampling; ``seed``, ``top_k``, ``min_p`` change
nothing in greedy decoding); ``n`` > 1 is refused.

Length control, as benchmark clients (guidellm, AIPerf, vLLM's ``benchmark_serving``) send it
with vLLM's extensions, is **honoured, never silently ignored**: ``min_tokens`` (EOS masked until
that many tokens were generated) and ``ignore_eos`` (EOS masked to the end: the answer has
exactly ``max_tokens`` tokens) go into the :class:`GenerationRequest`; the server refuses them
(400 naming the field) on an engine that cannot mask EOS.  ``stream_options.continuous_usage_stats``
puts ``usage`` (tokens so far) in every streamed chunk.  Fields that would change the answer
and that testbed does not implement (:data:`REFUSED`: stop strings, penalties, logprobs, ...)
get a 400 naming the field when set to anything but their no-op default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from testbed.engines.base import GenerationRequest

ROLES = ("system", "user", "assistant")

#: Fields that change what is generated or returned, which testbed does not implement: refused
#: (400) unless absent or equal to a no-op value (a client that sends the defaults is served).
REFUSED: dict[str, tuple[Any, ...]] = {
    "stop": (None, [], ""),
    "stop_token_ids": (None, []),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "logit_bias": (None, {}),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "best_of": (None, 1),
    "bad_words": (None, []),
    "use_beam_search": (None, False),
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


@dataclass(frozen=True)
class ParsedRequest:
    request: GenerationRequest
    chat: bool
    stream: bool
    include_usage: bool
    return_timing: bool
    warnings: tuple[str, ...]
    continuous_usage: bool = False


def _bad(param: str, value: Any, accepted: str) -> ApiError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ApiError(400, f"{param}={shown} is not accepted; expected {accepted}", param=param)


def _bool(body: dict[str, Any], key: str, default: bool = False) -> bool:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _bad(key, v, "true or false")
    return v


def parse_body(body: Any, *, chat: bool, served_model: str, max_tokens_limit: int) -> ParsedRequest:
    """Validate a ``/v1/completions`` (``chat=False``) or ``/v1/chat/completions`` body."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    model = body.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise _bad("model", model, f"a string naming the served model ({served_model!r})")
        if model != served_model:
            raise ApiError(404, f"model {model!r} is not served here; this server serves {served_model!r} "
                                "(see GET /v1/models)", param="model", kind="not_found_error")
    warnings: list[str] = []
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise _bad("messages", msgs, "a non-empty list of {\"role\": ..., \"content\": ...} objects")
        clean = []
        for k, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise _bad(f"messages[{k}]", m, "an object with 'role' and 'content'")
            role, content = m.get("role"), m.get("content")
            if role not in ROLES:
                raise _bad(f"messages[{k}].role", role, f"one of {', '.join(ROLES)}")
            if not isinstance(content, str):
                raise _bad(f"messages[{k}].content", content, "a string")
            clean.append({"role": role, "content": content})
        if not any(m["content"].strip() for m in clean):
            raise ApiError(400, "empty chat: every message content is empty; send at least one non-empty message",
                           param="messages")
        text, messages = None, tuple(clean)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise _bad("prompt", prompt, "a string (or a list holding one string)")
        if not prompt.strip():
            raise ApiError(400, "empty prompt: send a non-empty string", param="prompt")
        text, messages = prompt, None
    tkey = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(tkey)
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= max_tokens_limit
    ):
        raise _bad(tkey, max_tokens, f"an integer in [1, {max_tokens_limit}] (this server's limit; "
                                    "start it with a larger --max-new-tokens to allow more)")
    min_tokens, ignore_eos = _length_control(body, max_tokens, max_tokens_limit, tkey)
    n = body.get("n", 1)
    if n != 1:
        raise _bad("n", n, "1 (one choice per request)")
    for name, noop in REFUSED.items():
        v = body.get(name)
        if not _is_noop(v, noop):
            raise _bad(name, v, f"unset or {_noop_text(noop)}: testbed decodes greedily to EOS or max_tokens "
                                "and does not implement it")
    for name in ("temperature", "top_p"):
        v = body.get(name)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            raise _bad(name, v, "a number")
    if (body.get("temperature") or 0) > 0 and body.get("top_p", 1) != 0:
        warnings.append("sampling parameters ignored: decoding is greedy")
    stream = _bool(body, "stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise _bad("stream_options", opts, "an object such as {\"include_usage\": true}")
    include_usage = True if opts is None else _bool(opts, "include_usage", True)
    continuous = False if opts is None else _bool(opts, "continuous_usage_stats")
    return ParsedRequest(
        GenerationRequest(text=text, messages=messages, max_new_tokens=max_tokens, min_new_tokens=min_tokens,
                          ignore_eos=ignore_eos),
        chat=chat, stream=stream, include_usage=include_usage,
        return_timing=_bool(body, "return_timing"), warnings=tuple(warnings),
        continuous_usage=continuous and include_usage,
    )


def _length_control(body: dict[str, Any], max_tokens: int | None, limit: int, tkey: str) -> tuple[int, bool]:
    """``min_tokens`` (an integer in ``[0, max_tokens]``) and ``ignore_eos`` (a boolean), validated."""
    ignore_eos = _bool(body, "ignore_eos")
    v = body.get("min_tokens")
    if v is None:
        return 0, ignore_eos
    top = max_tokens if max_tokens is not None else limit
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= top:
        where = f"{tkey}={max_tokens}" if max_tokens is not None else f"this server's limit {limit}"
        raise _bad("min_tokens", v, f"an integer in [0, {top}] (at most {where})")
    return v, ignore_eos


def _is_noop(v: Any, noop: tuple[Any, ...]) -> bool:
    """``v`` equals one of the no-op values (``True`` is not ``1``; ``1`` and ``1.0`` are equal)."""
    for d in noop:
        if isinstance(d, bool) or isinstance(v, bool) or d is None or v is None:
            if v is d:
                return True
        elif isinstance(v, (int, float)) and isinstance(d, (int, float)):
            if v == d:
                return True
        elif type(v) is type(d) and v == d:
            return True
    return False


def _noop_text(noop: tuple[Any, ...]) -> str:
    return " or ".join(repr(d) for d in noop if d is not None)
