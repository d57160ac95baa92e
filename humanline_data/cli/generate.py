"""``humanline-data generate`` (sample completions) and ``humanline-data merge`` (join versions)."""

from __future__ import annotations

from pathlib import Path

import click

from humanline_data.backends import BACKENDS, SamplingParams
from humanline_data.cli.executor_options import executor_options

_OUT = click.option("--out", required=True, type=click.Path(path_type=Path), help="Output dataset <root>/<name>.")


@click.command("generate")
@click.argument("prompts", type=click.Path(path_type=Path))
@click.option("--model", required=True, help="'smollm2-135m-instruct' (embedded) or a local HF model folder.")
@click.option("--n", "n", default=SamplingParams.n, show_default=True, help="Samples per prompt.")
@click.option("--temperature", default=SamplingParams.temperature, show_default=True,
              help="Sampling temperature (0 = greedy).")
@click.option("--top-p", default=SamplingParams.top_p, show_default=True, help="Nucleus sampling mass.")
@click.option("--max-new-tokens", default=SamplingParams.max_new_tokens, show_default=True,
              help="Most tokens per completion (eos counts).")
@click.option("--seed", default=SamplingParams.seed, show_default=True,
              help="Run seed; each sample is seeded from (seed, prompt, index).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="auto = vllm when importable, else transformers.")
@click.option("--batch-size", default=16, show_default=True,
              help="Prompts per backend call; also the unit of checkpointing for resume.")
@click.option("--shard-index", default=0, show_default=True, help="This worker's shard (0-based).")
@click.option("--num-shards", default=1, show_default=True, help="Workers splitting the prompts by prompt_id hash.")
@click.option("--limit", type=int, default=None, help="Use only the first K distinct prompts.")
@_OUT
@executor_options
def generate_command(prompts: Path, out: Path, **kwargs) -> None:
    """Sample completions of PROMPTS (a prompts, completions or scored version) into OUT's next
    version (kind completions). Re-run the same command to resume an interrupted run (under
    either executor: the output is the same row for row)."""
    from humanline_data.generate import generate

    click.echo(generate(prompts, out, **kwargs))


@click.command("merge")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@_OUT
def merge_command(inputs: tuple[Path, ...], out: Path) -> None:
    """Join completions versions INPUTS (e.g. the shards of one job) into OUT's next version."""
    from humanline_data.generate import merge

    click.echo(merge(list(inputs), out))


COMMANDS = [generate_command, merge_command]
