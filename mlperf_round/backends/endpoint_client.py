"""One streamed completion from an OpenAI-compatible server, over the standard library's http.client.

Every failure (refused or dropped connection, a 4xx/5xx answer, an error event in the stream, a
read that outlives the timeout) is an `EndpointError` of one line that names the server: the SUT
turns it into a failed test, never a hang.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import RoundError


class EndpointError(RoundError):
    pass


@dataclass
class Streamed:
    text: str = ""
    first_text: str = ""
    token_ids: list[int] | None = None  # as the server returned them (vLLM's `return_token_ids`)
    first_ids: list[int] | None = None
    finish_reason: str | None = None
    completion_tokens: int | None = None  # the usage chunk's count, where the server sends one
    chunks: int = 0
    extra: dict = field(default_factory=dict)


def _connection(url: str, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise EndpointError(f"{url}: not an http(s) URL")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)


def _fail(url: str, path: str, err: BaseException) -> EndpointError:
    if isinstance(err, EndpointError):
        return err
    if isinstance(err, (socket.timeout, TimeoutError)):
        why = "no answer within the request timeout"
    elif isinstance(err, ConnectionRefusedError):
        why = "connection refused (is the server running?)"
    elif isinstance(err, (ConnectionError, http.client.RemoteDisconnected, http.client.IncompleteRead)):
        why = f"the connection dropped ({type(err).__name__}: the server died or closed it)"
    else:
        why = f"{type(err).__name__}: {err}"
    return EndpointError(f"endpoint {url}{path}: {why}".splitlines()[0])


def get_json(url: str, path: str, timeout: float = 10.0) -> dict | list | None:
    """GET a JSON document; None when the server has no such route (404, 405) or answers with something else."""
    conn = _connection(url, timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status in (404, 405):
            return None
        if resp.status >= 400:
            raise EndpointError(f"endpoint {url}{path}: HTTP {resp.status} {body[:200]!r}")
        try:
            return json.loads(body)
        except ValueError:
            return None
    except Exception as err:  # noqa: BLE001  (one line, whatever broke)
        raise _fail(url, path, err) from None
    finally:
        conn.close()


def stream_completion(url: str, body: dict, timeout: float, on_first=None, path: str = "/v1/completions") -> Streamed:
    """POST a streaming completion; `on_first(streamed)` runs the moment the first text arrives (TTFT)."""
    out = Streamed()
    conn = _connection(url, timeout)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status >= 400:
            detail = resp.read()[:300].decode(errors="replace").replace("\n", " ")
            raise EndpointError(f"endpoint {url}{path}: HTTP {resp.status}: {detail}")
        for raw in resp:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                err = chunk["error"]
                raise EndpointError(f"endpoint {url}{path}: the server's stream failed: {err}".splitlines()[0])
            if chunk.get("usage"):
                out.completion_tokens = chunk["usage"].get("completion_tokens")
            for choice in chunk.get("choices") or []:
                _take(out, choice, on_first)
        else:
            if out.finish_reason is None:  # the body ended without a finish: the server went away mid-answer
                raise EndpointError(
                    f"endpoint {url}{path}: the connection dropped mid-answer (the stream ended unfinished: "
                    "the server died or closed it)"
                )
        return out
    except Exception as err:  # noqa: BLE001
        raise _fail(url, path, err) from None
    finally:
        conn.close()


def _take(out: Streamed, choice: dict, on_first) -> None:
    text = choice.get("text") or ""
    ids = choice.get("token_ids")
    out.chunks += 1
    if ids:
        out.token_ids = (out.token_ids or []) + list(ids)
    if (text or ids) and not out.first_text and out.first_ids is None:
        out.first_text, out.first_ids = text, list(ids) if ids else None
        if on_first is not None:
            on_first(out)
    out.text += text
    if choice.get("finish_reason"):
        out.finish_reason = choice["finish_reason"]
