"""humanline-data: prompts -> completions -> scores -> pairs/groups/unpaired, as versioned Parquet."""

__version__ = "0.1.0"
