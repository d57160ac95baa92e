"""Readers for prompt sets: MATH (problem/answer), GSM8K (question/answer with ``#### ``),
AlpacaEval-style instructions (instruction [+ input]) and generic prompts (prompt | messages
[+ answer]). Each returns ``("prompts", row)``."""

from __future__ import annotations

from humanline_data.formats.fields import RecordError, carry_bookkeeping, optional_text, prompt_of, take, text

GSM8K_MARK = "####"


def user_turn(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def math(record: dict) -> tuple[str, dict]:
    """MATH: ``problem`` -> one user turn, ``answer`` kept (blank answers become null)."""
    problem = text(take(record, "problem"), "problem", "empty_prompt")
    return "prompts", {"messages": user_turn(problem), "answer": optional_text(take(record, "answer"), "answer")}


def gsm8k_answer(solution: str) -> str:
    """The final answer of a GSM8K solution: the text after ``#### ``, commas removed
    (as in openai/grade-school-math's own ``extract_answer``)."""
    return solution.rsplit(GSM8K_MARK, 1)[1].strip().replace(",", "")


def gsm8k(record: dict) -> tuple[str, dict]:
    """GSM8K: ``question`` -> one user turn; ``answer`` = the final answer after ``#### ``;
    the worked solution before it is kept in metadata as ``solution``."""
    question = text(take(record, "question"), "question", "empty_prompt")
    solution = text(take(record, "answer"), "answer", "no_final_answer")
    if GSM8K_MARK not in solution or not gsm8k_answer(solution):
        raise RecordError("no_final_answer", f"'answer' has no final answer after {GSM8K_MARK!r}")
    return "prompts", {
        "messages": user_turn(question),
        "answer": gsm8k_answer(solution),
        "metadata": {"solution": solution.rsplit(GSM8K_MARK, 1)[0].strip()},
    }


def instruction_prompt(record: dict) -> list[dict]:
    """Alpaca-style ``instruction`` plus optional ``input`` (joined by a blank line) as one user turn."""
    instruction = text(take(record, "instruction"), "instruction", "empty_prompt")
    extra = optional_text(take(record, "input", default=None), "input")
    return user_turn(f"{instruction}\n\n{extra}" if extra else instruction)


def alpaca(record: dict) -> tuple[str, dict]:
    """Instructions (AlpacaEval, Alpaca): ``instruction`` [+ ``input``] -> prompts without answer.
    Other columns (``output``, ``generator``, ``dataset`` ...) stay in metadata."""
    return "prompts", {"messages": instruction_prompt(record), "answer": None}


def any_prompt(record: dict) -> list[dict]:
    """Prompt messages from ``messages``, ``prompt`` (text or messages) or ``instruction`` [+ ``input``]."""
    for column in ("messages", "prompt"):
        if column in record:
            return prompt_of(take(record, column), column)
    if "instruction" in record:
        return instruction_prompt(record)
    raise RecordError("missing_column", "missing required column 'prompt' or 'messages' or 'instruction'")


def prompts(record: dict) -> tuple[str, dict]:
    """Generic prompts: ``prompt`` (text or messages) or ``messages``, optional ``answer``,
    ``source`` and ``split`` (so this project's own prompt versions import again)."""
    row = {"messages": any_prompt(record), "answer": optional_text(take(record, "answer", default=None), "answer")}
    carry_bookkeeping(record, row)
    return "prompts", row
