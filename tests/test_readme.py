"""The README stays a newcomer's page: at most 250 lines, its Python API block runs as written
(only its line of inputs swapped for a tiny model, two problems and a reward function), and
every relative link of the README and docs/ names a file (and heading) that exists."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
INPUTS = "MODEL, PROBLEMS, SCORER = "  # the block's one line of inputs
LENGTH_REWARD = ROOT / "tests" / "fixtures" / "user_scorer.py"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def relative_links(text: str) -> list[str]:
    """Targets of markdown links that are not URLs: ``path``, ``path#anchor`` or ``#anchor``."""
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation (``§``, ``.``, ``:``, ``\```)
    dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_readme_is_at_most_250_lines():
    assert len(README.read_text().splitlines()) <= 250


def test_every_relative_link_of_the_readme_and_docs_names_a_file_and_heading():
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    missing = []
    for page in pages:
        for target in relative_links(page.read_text()):
            path, _, anchor = target.partition("#")
            linked = (page.parent / path) if path else page
            if not linked.exists() or (anchor and anchor not in anchors(linked)):
                missing.append(f"{page.name}: {target}")
    assert len(pages) > 8 and not missing


def test_the_python_api_block_runs_every_stage_and_trains(tiny_model, tmp_path, monkeypatch):
    (block,) = python_blocks(README.read_text())
    lines = block.splitlines()
    where = [i for i, line in enumerate(lines) if line.startswith(INPUTS)]
    assert len(where) == 1, f"the block needs exactly one line starting {INPUTS!r}"
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"problem": f"What is {a} + {a}?", "answer": str(2 * a)}) + "\n"
                                for a in (3, 4)))
    scorer = f"python:{LENGTH_REWARD}:length_reward"  # a random model's answers differ in length, not in truth
    lines[where[0]] = f"{INPUTS}{str(tiny_model)!r}, {str(problems)!r}, {scorer!r}"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile("\n".join(lines), str(README), "exec"), namespace)

    kinds = {name: json.loads((tmp_path / "data" / name / "v1" / "manifest.json").read_text())
             for name in ("prompts", "completions", "scored", "pairs")}
    assert [kinds[n]["kind"] for n in kinds] == ["prompts", "completions", "scored", "pairs"]
    assert kinds["prompts"]["rows"] == 2 and kinds["pairs"]["rows"] >= 1
    run = Path(namespace["run"])
    assert run.resolve() == (tmp_path / "runs" / "api").resolve()
    settings = json.loads((run / "settings.json").read_text())
    assert settings["loss"] == "dpo" and settings["humanline"]["sync"] and settings["humanline"]["clip"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all(math.isfinite(m["train/loss"]) for m in metrics)
    assert (run / "checkpoints" / f"step-{metrics[-1]['step']}").is_dir()
