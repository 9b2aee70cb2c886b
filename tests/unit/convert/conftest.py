"""Runs `ckpt convert` in-process and checks the one-line error contract."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from kedge.ckpt.cli import main


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def one_line_error(self, *needles: str) -> str:
        """Asserts a non-zero exit with exactly one stderr line naming every needle; returns it."""
        assert self.code != 0, self.stdout
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, self.stderr
        assert lines[0].startswith("ckpt convert: "), lines[0]
        for needle in needles:
            assert needle in lines[0], (needle, lines[0])
        return lines[0]


Convert = Callable[..., Result]


@pytest.fixture
def convert() -> Convert:
    def run(*args: str | Path) -> Result:
        result = CliRunner().invoke(main, ["convert", "-q", *map(str, args)], catch_exceptions=False)
        return Result(result.exit_code, result.stdout, result.stderr)

    return run


def leftovers(directory: Path) -> list[str]:
    """Temporary or partial outputs the converter would have left behind."""
    return sorted(p.name for p in directory.iterdir() if ".kedge-tmp-" in p.name or ".kedge-old-" in p.name)
