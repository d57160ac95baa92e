"""``python -m humanline_train`` = ``humanline-train``."""

from humanline_train.cli import main

main()
