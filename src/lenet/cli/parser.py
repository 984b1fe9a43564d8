"""argparse, made stricter and more helpful for people typing commands.

- No abbreviations: `--epoch 1` is an error, not silently `--epochs 1` (a prefix that
  works today may stop working, or change meaning, when a flag is added).
- A mistyped flag is reported by the command it was given to, with that command's
  usage and the closest flags it has: `lenet train --learning-rate 0.1` suggests
  `--lr`, where argparse would print the top-level usage with no hint.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import textwrap
from typing import NoReturn

# Words people reach for that difflib cannot connect to our flag names.
SYNONYMS = {
    "--learning-rate": "--lr", "--learning_rate": "--lr", "--learningrate": "--lr", "--rate": "--lr",
    "--bs": "--batch-size", "--batch": "--batch-size", "--batchsize": "--batch-size",
    "--wd": "--weight-decay", "--decay": "--weight-decay", "--data": "--data-dir", "--dir": "--data-dir",
    "--iterations": "--epochs", "--iters": "--epochs", "--gpu": "--device", "--cuda": "--device",
    "--mixed-precision": "--amp", "--fp16": "--amp", "--bf16": "--amp", "--arch": "--model",
    "--architecture": "--model", "--output": "--out", "--outdir": "--out", "--recipe": "--preset",
}


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, but never wrapping a line at a hyphen: help lists preset names and
    flags (`best-mnist`, `--cpus-per-run`) that people copy whole."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(re.sub(r"\s+", " ", text).strip(), width, break_on_hyphens=False)


class LenetParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def option_strings(self) -> list[str]:
        return sorted({s for action in self._actions for s in action.option_strings if s.startswith("--")})

    def suggest(self, unknown: str) -> str | None:
        flag = unknown.split("=", 1)[0]
        known = self.option_strings()
        if SYNONYMS.get(flag) in known:
            return SYNONYMS[flag]
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
        return close[0] if close else None

    def unrecognized(self, extras: list[str]) -> NoReturn:
        """Stop with this parser's usage, naming each unknown flag and its likely meaning."""
        flags = [e for e in extras if e.startswith("-")]
        hints = []
        for flag in flags:
            close = self.suggest(flag)
            hints.append(f"{flag} (did you mean {close}?)" if close else flag)
        listed = ", ".join(hints) if hints else " ".join(extras)
        self.error(f"unrecognized arguments: {listed}; `{self.prog} -h` lists the options")

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def subparser(parser: argparse.ArgumentParser, command: str | None) -> LenetParser | None:
    """The parser of ``command`` (a subcommand of ``parser``), if there is one."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            found = action.choices[command]
            return found if isinstance(found, LenetParser) else None
    return None
