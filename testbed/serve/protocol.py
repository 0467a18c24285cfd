"""The OpenAI-compatible request bodies: validation into a :class:`GenerationRequest`.

Pure functions (no I/O): a body that cannot be served raises :class:`ApiError`, whose message
names the field, the value and what is accepted, and whose ``status`` is the HTTP status
(400 bad request, 404 unknown model).  Every field is either honoured, accepted with no effect
(documented), or refused with a 400 naming it; a field this module does not know is refused too,
with the list of accepted fields (:func:`accepted_fields`): nothing is silently ignored.

Decoding is greedy (argmax): ``temperature`` must be 0 or absent (a positive temperature asks
for sampling, which this server does not do: 400), and must be a finite number; ``top_p``,
``top_k``, ``min_p`` and ``seed`` are accepted when well-typed and change nothing in greedy
decoding; ``n`` and ``best_of`` must be the integer 1.  ``stop`` (a string or a list of up to 4
non-empty strings of at most 256 characters) is honoured by :mod:`testbed.serve.stops`.  Strings
that reach the tokenizer (``prompt``, message ``content``) and stop strings must be encodable
as UTF-8: a lone surrogate (``"\\ud800"`` in JSON) is a 400 naming the field.

Length control, as benchmark clients (guidellm, AIPerf, vLLM's ``benchmark_serving``) send it
with vLLM's extensions, is **honoured, never silently ignored**: ``min_tokens`` (EOS masked until
that many tokens were generated) and ``ignore_eos`` (EOS masked to the end: the answer has
exactly ``max_tokens`` tokens) go into the :class:`GenerationRequest`; the server refuses them
(400 naming the field) on an engine that cannot mask EOS.  ``stream_options.continuous_usage_stats``
puts ``usage`` (tokens so far) in every streamed chunk.  Fields that would change the answer
and that testbed does not implement (:data:`REFUSED`: stop token ids, penalties, logprobs, ...)
get a 400 naming the field when set to anything but their no-op default.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from testbed.engines.base import GenerationRequest
from testbed.serve.limits import finite, has_surrogate

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
MAX_STOPS = 4
MAX_STOP_CHARS = 256

#: Fields that change what is generated or returned, which testbed does not implement: refused
#: (400) unless absent or equal to a no-op value (a client that sends the defaults is served).
REFUSED: dict[str, tuple[Any, ...]] = {
    "stop_token_ids": (None, []),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "logit_bias": (None, {}),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "bad_words": (None, []),
    "use_beam_search": (None, False),
}

#: Fields of both endpoints that are read (honoured, validated, or accepted with no effect).
COMMON_FIELDS = ("model", "max_tokens", "stream", "stream_options", "temperature", "top_p", "top_k", "min_p",
                 "seed", "n", "best_of", "stop", "user", "min_tokens", "ignore_eos", "return_timing")
STREAM_OPTIONS = ("include_usage", "continuous_usage_stats")


def accepted_fields(chat: bool) -> tuple[str, ...]:
    """Every field a body of this endpoint may carry (the rest is refused, naming this list)."""
    own = ("messages", "max_completion_tokens") if chat else ("prompt",)
    return own + COMMON_FIELDS + tuple(REFUSED)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None, exc: BaseException | None = None) -> None:
        self.error_id: str | None = None
        if status >= 500 and status not in (503, 504):
            # never an internal exception's text in a response: the log has it, under this id
            self.error_id = uuid.uuid4().hex[:12]
            log.error("internal error %s (HTTP %d): %s", self.error_id, status, message, exc_info=exc)
            message = f"internal error (id {self.error_id}; the server log has the details)"
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
    stop: tuple[str, ...] = ()


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
    _known_fields(body, accepted_fields(chat))
    model = body.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise _bad("model", model, f"a string naming the served model ({served_model!r})")
        if model != served_model:
            raise ApiError(404, f"model {model!r} is not served here; this server serves {served_model!r} "
                                "(see GET /v1/models)", param="model", kind="not_found_error")
    text, messages = _chat_input(body) if chat else _prompt_input(body)
    tkey = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(tkey)
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= max_tokens_limit
    ):
        raise _bad(tkey, max_tokens, f"an integer in [1, {max_tokens_limit}] (this server's limit; "
                                    "start it with a larger --max-new-tokens to allow more)")
    min_tokens, ignore_eos = _length_control(body, max_tokens, max_tokens_limit, tkey)
    for name, noop in REFUSED.items():
        v = body.get(name)
        if not _is_noop(v, noop):
            raise _bad(name, v, f"unset or {_noop_text(noop)}: testbed decodes greedily to EOS or max_tokens "
                                "and does not implement it")
    _decoding(body)
    stop = _stop(body.get("stop"))
    stream = _bool(body, "stream")
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise _bad("stream_options", opts, "an object such as {\"include_usage\": true}")
        _known_fields(opts, STREAM_OPTIONS, "stream_options.")
    include_usage = True if opts is None else _bool(opts, "include_usage", True)
    continuous = False if opts is None else _bool(opts, "continuous_usage_stats")
    return ParsedRequest(
        GenerationRequest(text=text, messages=messages, max_new_tokens=max_tokens, min_new_tokens=min_tokens,
                          ignore_eos=ignore_eos),
        chat=chat, stream=stream, include_usage=include_usage,
        return_timing=_bool(body, "return_timing"), warnings=(),
        continuous_usage=continuous and include_usage, stop=stop,
    )


def _known_fields(obj: dict[str, Any], accepted: tuple[str, ...], prefix: str = "") -> None:
    for name in obj:
        if name not in accepted:
            raise ApiError(400, f"unknown field {prefix}{name!r}: not accepted; accepted fields: "
                                f"{', '.join(accepted)}",
                           param=f"{prefix}{name}"[:200].encode("utf-8", "backslashreplace").decode("utf-8"))


def _utf8(param: str, s: str) -> None:
    """A string the tokenizer will see must be encodable: a lone surrogate is the client's error."""
    if has_surrogate(s):
        raise ApiError(400, f"{param} holds a lone UTF-16 surrogate (such as \\ud800), which is not a character; "
                            "send valid Unicode text", param=param)


def _prompt_input(body: dict[str, Any]) -> tuple[str, None]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _bad("prompt", prompt, "a string (or a list holding one string)")
    _utf8("prompt", prompt)
    if not prompt.strip():
        raise ApiError(400, "empty prompt: send a non-empty string", param="prompt")
    return prompt, None


def _chat_input(body: dict[str, Any]) -> tuple[None, tuple[dict[str, str], ...]]:
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
        _utf8(f"messages[{k}].content", content)
        clean.append({"role": role, "content": content})
    if not any(m["content"].strip() for m in clean):
        raise ApiError(400, "empty chat: every message content is empty; send at least one non-empty message",
                       param="messages")
    return None, tuple(clean)


def _decoding(body: dict[str, Any]) -> None:
    """Greedy decoding: temperature 0 or unset; the other sampling knobs well-typed, and without effect."""
    t = body.get("temperature")
    if t is not None:
        if not finite(t):
            raise _bad("temperature", t, "a finite number: 0 (or unset)")
        if t != 0:
            raise _bad("temperature", t, "0 or unset: this server decodes greedily (argmax) and does not sample, "
                                         "so a temperature would not be honoured")
    for name, lo, hi in (("top_p", 0.0, 1.0), ("min_p", 0.0, 1.0)):
        v = body.get(name)
        if v is not None and (not finite(v) or not lo <= v <= hi):
            raise _bad(name, v, f"a number in [{lo:g}, {hi:g}] (no effect: decoding is greedy)")
    top_k = body.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < -1):
        raise _bad("top_k", top_k, "an integer >= -1 (no effect: decoding is greedy)")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not -(2**63) <= seed < 2**64):
        raise _bad("seed", seed, "an integer (no effect: decoding is greedy, so there is nothing to seed)")
    for name in ("n", "best_of"):
        v = body.get(name)
        if v is not None and (type(v) is not int or v != 1):
            raise _bad(name, v, "the integer 1 (one greedy choice per request)")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("user", user, "a string (an end-user id; not used)")


def _stop(v: Any) -> tuple[str, ...]:
    """``stop``: unset, a string, or a list of up to 4 strings; each non-empty, at most 256 characters."""
    accepted = (f"a non-empty string or a list of at most {MAX_STOPS} non-empty strings of at most "
                f"{MAX_STOP_CHARS} characters")
    if v is None:
        return ()
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or len(stops) > MAX_STOPS:
        raise _bad("stop", v, accepted)
    for k, x in enumerate(stops):
        if not isinstance(x, str) or not x or len(x) > MAX_STOP_CHARS:
            raise _bad("stop" if isinstance(v, str) else f"stop[{k}]", x, accepted)
        _utf8("stop" if isinstance(v, str) else f"stop[{k}]", x)
    return tuple(dict.fromkeys(stops))


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
