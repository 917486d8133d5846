"""LLM judges behind any OpenAI-compatible ``/v1/chat/completions`` endpoint: MT-Bench-style grading, pairwise.

The protocols (prompts written for this project, verdict parsing, :func:`mt_bench_score`, :func:`win_rate`)
live in :mod:`dspa_lite.evaluation.protocols`; this module is the client. In pairwise comparisons the model's output is
shown first or second at random (seeded per item, recorded in ``Comparison.model_position``) to control the
judge's position bias, and the verdict is mapped back.

Configure with ``DSPA_JUDGE_BASE_URL`` (e.g. ``http://localhost:8000/v1``), ``DSPA_JUDGE_MODEL`` and
``DSPA_JUDGE_API_KEY``, or pass the same fields to :class:`JudgeConfig`. Requests are retried with
exponential backoff on HTTP 429/5xx and connection errors. Every answer with a readable verdict is appended (one
``os.write`` per JSONL line, fsynced) to a cache keyed by ``sha256(judge model, prompt messages)``, so an interrupted
run resumes without re-asking, and answers already received survive a later failure; unreadable answers are counted
(``Judge.unparsed``) and asked again next time, and if the cache cannot be written the answers are kept in memory
(``Judge.unsaved``, ``Judge.cache_error``). Ctrl-C stops at once: requests run in daemon threads. Numbers from a
judge other than the benchmarks' own (GPT-4 for MT-Bench, AlpacaEval's annotator) are not comparable
with their leaderboards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import queue
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..method.checks import check_float
from .protocols import (  # re-exported: the protocols' records and scores belong to the judge's public API
    Comparison,
    Rating,
    mt_bench_jobs,
    mt_bench_score,
    pairwise_jobs,
    parse_rating,
    parse_verdict,
    win_rate,
)

__all__ = ["Comparison", "Judge", "JudgeConfig", "JudgeError", "Rating", "cache_key", "mt_bench_score",
           "parse_rating", "parse_verdict", "win_rate"]


class JudgeError(RuntimeError):
    """The judge endpoint could not be used; the message names the endpoint and the last error."""


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge lives and how to call it. ``from_env()`` reads the ``DSPA_JUDGE_*`` variables.

    ``base_url`` is the OpenAI-style base (``https://api.openai.com/v1``, ``http://localhost:8000/v1``);
    a bare host gets ``/v1``. Retry ``i`` (from 1) waits ``min(max_backoff_s, backoff_s * 2**(i-1))`` or
    the server's ``Retry-After``. Prices are dollars per 1,000 prompt/completion tokens, for the estimate
    on the progress bar. ``cache_path=None`` caches in ``DSPA_CACHE/judge/<model>.jsonl``.
    """

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    temperature: float = 0.0
    max_tokens: int = 1024
    timeout_s: float = 120.0
    max_retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    price_prompt_per_1k: float = 0.0
    price_completion_per_1k: float = 0.0
    max_workers: int = 4
    cache_path: str | None = None

    def __post_init__(self):
        if urllib.parse.urlparse(self.base_url or "").scheme not in ("http", "https"):
            raise ValueError(f"base_url={self.base_url!r} must be an http(s) URL such as http://localhost:8000/v1 "
                             "(set DSPA_JUDGE_BASE_URL or pass base_url=)")
        if not (isinstance(self.model, str) and self.model.strip()):
            raise ValueError(f"model={self.model!r}: name the judge model (set DSPA_JUDGE_MODEL or pass model=)")
        for name in ("temperature", "timeout_s", "backoff_s", "max_backoff_s", "price_prompt_per_1k",
                     "price_completion_per_1k"):  # timeout_s: the seconds to wait for each answer, not 0
            check_float(getattr(self, name), f"JudgeConfig.{name}", above_low=name == "timeout_s")
        for name, low in (("max_tokens", 1), ("max_retries", 0), ("max_workers", 1)):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int) or \
                    getattr(self, name) < low:
                raise ValueError(f"JudgeConfig.{name}={getattr(self, name)!r} must be an integer >= {low}")

    @classmethod
    def from_env(cls, **overrides: Any) -> JudgeConfig:
        """Fill ``base_url``, ``model`` and ``api_key`` from ``DSPA_JUDGE_*`` unless passed in ``overrides``."""
        for name in ("base_url", "model", "api_key"):
            if overrides.get(name) is None:
                overrides[name] = os.environ.get(f"DSPA_JUDGE_{name.upper()}") or None
        if overrides["base_url"] is None or overrides["model"] is None:
            missing = [f"DSPA_JUDGE_{n.upper()}" for n in ("base_url", "model") if overrides[n] is None]
            raise JudgeError(f"no judge configured: set {' and '.join(missing)} (for example "
                             "DSPA_JUDGE_BASE_URL=http://localhost:8000/v1 DSPA_JUDGE_MODEL=my-judge) or pass them")
        return cls(**overrides)

    @property
    def endpoint(self) -> str:
        url = self.base_url.rstrip("/")
        if url.endswith("/chat/completions"):
            return url
        return url + ("/v1" if urllib.parse.urlparse(url).path in ("", "/") else "") + "/chat/completions"

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "api_key"}


def cache_key(model: str, messages: Sequence[Mapping[str, str]]) -> str:
    """The cache key of one request: a hash of the judge model and the exact prompt messages."""
    text = json.dumps([model, list(messages)], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Reply:
    content: str
    usage: dict
    cached: bool


class Judge:
    """A judge model behind an OpenAI-compatible endpoint, with retries, a disk cache and a cost estimate."""

    def __init__(self, config: JudgeConfig | None = None, **overrides: Any):
        self.config = JudgeConfig.from_env(**overrides) if config is None else dataclasses.replace(config, **overrides)
        if self.config.cache_path is None:
            from ..loading.config import cache_dir

            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.config.model)
            self.cache_path = cache_dir("judge") / f"{slug}.jsonl"
        else:
            self.cache_path = Path(self.config.cache_path).expanduser()
        self._lock = threading.Lock()
        self._stop = threading.Event()  # set to stop the worker threads of the current chat() call
        self._cache = self._load_cache()
        self.usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self.unparsed = 0  # answers without a readable verdict or score: returned, not cached
        self.unsaved = 0  # answers kept in memory only, because the cache file could not be written
        self.cache_error: str | None = None

    @property
    def cost(self) -> float:
        """Estimated dollars spent by this object's requests (cached answers cost nothing)."""
        c = self.config
        return (self.usage["prompt_tokens"] * c.price_prompt_per_1k
                + self.usage["completion_tokens"] * c.price_completion_per_1k) / 1000

    def _load_cache(self) -> dict[str, dict]:
        rows: dict[str, dict] = {}
        if not self.cache_path.exists():
            return rows
        with open(self.cache_path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    row = json.loads(line)
                    rows[row["key"]] = row
                except (ValueError, KeyError, TypeError):  # a line torn by a crash: that item is asked again
                    if line.strip():
                        print(f"judge cache {self.cache_path}:{lineno}: unreadable line skipped", file=sys.stderr)
        return rows

    def _append(self, row: dict) -> None:
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        with self._lock:
            self._cache[row["key"]] = row  # kept for this run even if the file cannot be written
            try:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                if self.cache_path.exists() and (size := self.cache_path.stat().st_size):
                    with open(self.cache_path, "rb") as f:
                        f.seek(size - 1)
                        if f.read(1) != b"\n":  # never glue a row onto a line torn by a crash
                            data = b"\n" + data
                with open(self.cache_path, "ab", buffering=0) as f:  # unbuffered: one write() per row, so appends
                    f.write(data)  # from threads or processes do not interleave
                    os.fsync(f.fileno())
            except OSError as e:  # the answer is paid for: keep it in memory and say where it could not go
                self.unsaved += 1
                if self.cache_error is None:
                    self.cache_error = f"{self.cache_path}: {e.strerror or e}"
                    print(f"judge cache {self.cache_error}: answers are kept in memory for this run only",
                          file=sys.stderr)

    def _post(self, messages: list[dict]) -> dict:
        c = self.config
        payload = {"model": c.model, "messages": messages, "temperature": c.temperature, "max_tokens": c.max_tokens}
        headers = {"Content-Type": "application/json"}
        if c.api_key:
            headers["Authorization"] = f"Bearer {c.api_key}"
        last, wait = "no attempt made", 0.0
        for attempt in range(c.max_retries + 1):
            if attempt and self._stop.wait(wait or min(c.max_backoff_s, c.backoff_s * 2 ** (attempt - 1))):
                raise JudgeError(f"judge endpoint {c.endpoint}: stopped while retrying ({last})")
            request = urllib.request.Request(c.endpoint, json.dumps(payload).encode(), headers, method="POST")
            wait = 0.0
            try:
                with urllib.request.urlopen(request, timeout=c.timeout_s) as response:
                    raw = response.read()
            except urllib.error.HTTPError as e:
                body = e.read().decode("utf-8", "replace")[:300]
                last = f"HTTP {e.code} {e.reason}: {body}"
                if e.code == 429 or e.code >= 500:
                    retry_after = (e.headers or {}).get("Retry-After", "")
                    wait = min(c.max_backoff_s, float(retry_after)) if retry_after.replace(".", "", 1).isdigit() else 0
                    continue
                hint = {401: "check DSPA_JUDGE_API_KEY", 403: "check DSPA_JUDGE_API_KEY",
                        404: "check DSPA_JUDGE_BASE_URL (it usually ends in /v1) and DSPA_JUDGE_MODEL"}
                raise JudgeError(f"judge endpoint {c.endpoint} refused the request with {last} (not retried; "
                                 f"{hint.get(e.code, 'check the request fields the server accepts')})") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # refused, reset, DNS, timeouts
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
                continue
            try:
                return json.loads(raw)
            except ValueError:
                last = f"HTTP 200 with a body that is not JSON: {raw[:200]!r}"
        raise JudgeError(f"judge endpoint {c.endpoint} failed {c.max_retries + 1} times; last error: {last}")

    def _ask(self, messages: list[dict], key: str, parse: Callable[[str], Any] | None = None) -> Reply:
        body = self._post(messages)
        try:
            content = body["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"judge endpoint {self.config.endpoint} answered JSON without "
                             f"choices[0].message.content: {json.dumps(body)[:300]}") from None
        usage = {k: int(v) for k, v in (body.get("usage") or {}).items()
                 if k in ("prompt_tokens", "completion_tokens") and isinstance(v, int | float)}
        with self._lock:
            self.usage["requests"] += 1
            for k, v in usage.items():
                self.usage[k] += v
            unreadable = parse is not None and parse(content) is None
            self.unparsed += unreadable
        if not unreadable:  # an answer without a verdict is not cached: a rerun asks again
            self._append({"key": key, "model": self.config.model, "messages": messages, "content": content,
                          "usage": usage, "time": time.time()})
        return Reply(content, usage, cached=False)

    def _run(self, todo: dict[str, list[dict]], parse, bar) -> tuple[dict[str, Reply], Exception | None]:
        """Ask ``todo`` on daemon threads; stop at the first failure (letting in-flight answers be cached) or at
        once on Ctrl-C (the threads die with the process instead of holding it for ``timeout_s``)."""
        jobs: queue.Queue = queue.Queue()
        results: queue.Queue = queue.Queue()
        for item in todo.items():
            jobs.put(item)

        def work():
            while not self._stop.is_set():
                try:
                    key, messages = jobs.get_nowait()
                except queue.Empty:
                    return
                try:
                    results.put((key, self._ask(messages, key, parse), None))
                except Exception as e:  # reported by the caller
                    results.put((key, None, e))

        self._stop.clear()
        threads = [threading.Thread(target=work, daemon=True) for _ in range(min(self.config.max_workers, len(todo)))]
        for t in threads:
            t.start()
        fresh: dict[str, Reply] = {}
        failure: Exception | None = None
        try:
            while any(t.is_alive() for t in threads) or not results.empty():
                try:
                    key, reply, error = results.get(timeout=0.1)
                except queue.Empty:
                    continue
                if error is not None:
                    failure = failure or error
                    self._stop.set()  # no new requests; those in flight finish and are cached
                    continue
                fresh[key] = reply
                bar.update(1)
                bar.set_postfix_str(f"~${self.cost:.4f}, {self.usage['requests']} requests")
        finally:
            self._stop.set()
        return fresh, failure

    def chat(self, prompts: Sequence[list[dict]], progress: bool = True, desc: str = "judge",
             parse: Callable[[str], Any] | None = None) -> list[Reply]:
        """Answer each message list, from the cache when possible, concurrently, with a progress bar.

        ``parse(content)`` (e.g. :func:`parse_verdict`) says whether an answer is usable: answers it returns
        ``None`` for are returned but not cached (and cached ones are asked again). If a request fails for good,
        the answers received so far are already in the cache and :class:`JudgeError` says so: rerunning resumes.
        """
        keys = [cache_key(self.config.model, p) for p in prompts]
        usable = {k for k in keys if k in self._cache and (parse is None or parse(self._cache[k]["content"]) is not None)}
        todo = {k: p for k, p in zip(keys, prompts, strict=True) if k not in usable}  # also de-duplicates
        bar = tqdm(total=len(keys), initial=len(keys) - len(todo), desc=desc, file=sys.stderr, disable=not progress)
        try:
            fresh, failure = self._run(todo, parse, bar)
        finally:
            bar.close()
        if failure is not None:
            done = len(keys) - len(todo) + len(fresh)
            if not isinstance(failure, JudgeError):
                raise failure
            raise JudgeError(f"{failure}\n{done} of {len(keys)} items are judged and saved in {self.cache_path}; "
                             "rerun to resume (judged items are not asked again)") from failure
        return [fresh.get(k) or Reply(self._cache[k]["content"], self._cache[k].get("usage", {}), True) for k in keys]

    def grade_mt_bench(self, questions: Sequence[Any], answers: Mapping[Any, Sequence[str]] | Sequence[Any],
                       turns: Sequence[int] = (1, 2), progress: bool = True) -> list[Rating]:
        """Grade each question's answer turns 1-10.

        ``questions``: FastChat question rows (``question_id``, ``category``, ``turns``, optional
        ``reference``) or :class:`~dspa_lite.evaluation.formats.MTBenchQuestion`. ``answers``: ``question_id`` ->
        answer turns, or a list of FastChat answer rows or :class:`~dspa_lite.evaluation.formats.MTBenchAnswer`.
        """
        jobs, meta = mt_bench_jobs(questions, answers, turns)
        replies = self.chat(jobs, progress, desc="MT-Bench grading", parse=parse_rating)
        return [Rating(qid, t, cat, parse_rating(r.content), r.content, r.cached)
                for (qid, t, cat), r in zip(meta, replies, strict=True)]

    def compare(self, instructions: Sequence[str], outputs: Sequence[str], references: Sequence[str],
                seed: int = 0, progress: bool = True) -> list[Comparison]:
        """Pairwise: is ``outputs[i]`` (the model) better than ``references[i]`` for ``instructions[i]``?

        Item ``i`` shows the model's output as A or B by a coin seeded with ``(seed, i, instruction)``, so
        reruns ask exactly the same prompts (and hit the cache).
        """
        jobs, positions = pairwise_jobs(instructions, outputs, references, seed)
        replies = self.chat(jobs, progress, desc="pairwise judging", parse=parse_verdict)
        result = []
        for i, (x, pos, r) in enumerate(zip(instructions, positions, replies, strict=True)):
            verdict = parse_verdict(r.content)
            winner = {None: None, "tie": "tie", pos: "model"}.get(verdict, "reference")
            result.append(Comparison(i, x, pos, verdict, winner, r.content, r.cached))
        return result

