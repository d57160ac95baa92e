"""The math scorer: extract a completion's final answer and check it with math-verify.

Extraction tries, in order, and takes the last occurrence of the first kind found:
``\\boxed{...}`` (nested braces; also ``\\boxed 2`` and ``\\fbox{}``), ``#### x`` (GSM8K),
"the (final) answer is x", a line ``A: x`` / ``Answer: x`` / ``Final answer: x``, and else the
last number in the text. The first four are explicit final-answer markers (the ``format``
component is 1.0 when one was found).

The extracted answer and the row's reference ``answer`` (a plain number for GSM8K, LaTeX for
MATH) are both wrapped in ``\\boxed{}`` and parsed by math-verify, then compared with
``math_verify.verify``. A reference that is a plain number needs a number, not an expression
that evaluates to it: "the answer is 18 + 42" does not answer "60" (math-verify would call them
equal, and a policy trained on arithmetic learns to restate the question); fractions still
match decimals (``\\frac{1}{2}`` answers ``0.5``). reward = correct
(1.0 / 0.0) + format_weight * format. Anything that goes wrong while parsing or comparing counts
as wrong (0.0), never as a crash.

math-verify's timeouts use ``signal.alarm``, which only works in a process's main thread. Called
from another thread (a Ray Data actor runs its batches off the main thread), the scorer verifies
in worker processes, as with ``workers > 1``, so that the timeouts still hold.
"""

from __future__ import annotations

import functools
import multiprocessing
import re
import threading
from concurrent.futures import ProcessPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc

from humanline_data.errors import SchemaError
from humanline_data.scorers.base import Scorer

_TIMEOUT_S = 5
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_EXPRESSION = re.compile(r"[\d)}]\s*(?:[-+*×^]|\\times|\\cdot)\s*[\d({\\]")  # a sum, difference, product or power

_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")
_HASHES = re.compile(r"####\s*(.+)")
_ANSWER_IS = re.compile(r"(?i)\bthe\s+(?:final\s+)?answer\s+is\s*:?\s*(.+?)(?:\.(?:\s|$)|\n|$)")
_ANSWER_LINE = re.compile(r"(?im)^[ \t*#]*(?:final\s+answer|answer|a)\s*:\s*(.+?)\s*$")
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_CURRENCY = re.compile(r"^(?:\\\$|\$)\s*(?=[-\d.])")


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces) or ``\\boxed x``; None if none."""
    for m in reversed(list(_BOXED.finditer(text))):
        start = m.end()
        if text[start:start + 1] == "{":
            depth = 0
            for j in range(start, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[start + 1:j]
            continue  # unbalanced: try an earlier one
        bare = re.match(r"[^\s$]+", text[start:])
        if bare:
            return bare.group(0)
    return None


def _last_match(pattern: re.Pattern, text: str) -> str | None:
    found = pattern.findall(text)
    return found[-1] if found else None


def extract_answer(text: str) -> tuple[str | None, bool]:
    """``(answer, marked)``: the final answer of ``text`` (None if there is none) and whether an
    explicit final-answer marker (boxed, ####, "the answer is", "Answer:") gave it."""
    for find in (_last_boxed, lambda t: _last_match(_HASHES, t),
                 lambda t: _last_match(_ANSWER_IS, t), lambda t: _last_match(_ANSWER_LINE, t)):
        found = find(text)
        if found is not None and clean_answer(found):
            return clean_answer(found), True
    number = _last_match(_NUMBER, text)
    return (clean_answer(number), False) if number is not None else (None, False)


def clean_answer(answer: str) -> str:
    """An answer without surrounding math delimiters, markdown, trailing period, currency
    sign or thousands separators (``"$1,080$."`` -> ``"1080"``)."""
    answer = answer.strip()
    previous = None
    while answer != previous:
        previous = answer
        answer = answer.strip().strip("*").rstrip(".").strip()
        for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if answer.startswith(left) and answer.endswith(right) and len(answer) > len(left) + len(right) - 1:
                answer = answer[len(left):len(answer) - len(right)]
    answer = _CURRENCY.sub("", answer)
    if _THOUSANDS.fullmatch(answer):
        answer = answer.replace(",", "")
    return answer.strip()


def _timeout() -> int | None:
    return _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=8192)
def _parse(answer: str, timeout: int | None) -> list:
    from math_verify import parse

    return parse("\\boxed{" + answer + "}", parsing_timeout=timeout)


def is_correct(predicted: str | None, gold: str) -> bool:
    """Whether ``predicted`` equals the reference ``gold`` (math-verify; exceptions -> False).
    A plain-number ``gold`` is not matched by an arithmetic expression."""
    if predicted is None:
        return False
    if _PLAIN_NUMBER.fullmatch(clean_answer(gold)) and _EXPRESSION.search(predicted):
        return False
    from math_verify import verify

    timeout = _timeout()
    try:
        gold_parsed = _parse(clean_answer(gold), timeout)
        pred_parsed = _parse(predicted, timeout)
        return bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - math-verify raises many kinds; a failed check is a 0
        return False


def score_answers(pairs: list[tuple[str, str]]) -> list[tuple[float, float]]:
    """``(correct, format)`` for each ``(completion, reference answer)`` pair."""
    out = []
    for completion, gold in pairs:
        predicted, marked = extract_answer(completion)
        out.append((float(is_correct(predicted, gold)), float(marked)))
    return out


class MathVerifier(Scorer):
    """Reward 1.0 for a verified final answer, 0.0 otherwise, plus format_weight * format.

    With ``workers > 1``, or when called off the main thread, each batch is split across
    ``workers`` worker processes (spawned at the first such call, shut down by :meth:`close`);
    sympy-bound MATH answers score about 100-200 rows/s per core.
    """

    def __init__(self, format_weight: float = 0.0, workers: int = 1) -> None:
        self.format_weight = float(format_weight)
        self.workers = workers
        self.identity = "math" if not self.format_weight else f"math+format*{self.format_weight:g}"
        self.params = {"format_weight": self.format_weight, "workers": workers}
        self.producer = {"scorer": "math-verify", "math_verify": _math_verify_version(), "numeric_gold": "number only"}
        self._pool = None

    def check(self, table: pa.Table) -> None:
        missing = pc.is_null(table.column("answer"))
        if pc.any(missing).as_py():
            row = pc.index(missing, True).as_py()
            raise SchemaError(
                f"math scorer needs an answer column; row {row} of prompt_id "
                f"{table.column('prompt_id')[row].as_py()} has none"
            )

    def __call__(self, rows: list[dict]) -> list[tuple[float, dict[str, float]]]:
        pairs = [(row["completion"], row["answer"]) for row in rows]
        if self._pool is None and (self.workers > 1 or threading.current_thread() is not threading.main_thread()):
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        if self._pool is None:
            results = score_answers(pairs)
        else:
            size = -(-len(pairs) // self.workers)
            chunks = [pairs[i:i + size] for i in range(0, len(pairs), size)]
            results = [r for chunk in self._pool.map(score_answers, chunks) for r in chunk]
        return [
            (correct + self.format_weight * fmt, {"correct": correct, "format": fmt}) for correct, fmt in results
        ]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def _math_verify_version() -> str:
    from importlib.metadata import version

    return version("math-verify")
