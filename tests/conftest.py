"""Shared pytest configuration.

Fixture modules live in tests/kedge_fixtures/ and are loaded as plugins, one module per real service
or concern (SeaweedFS, etcd, process helpers). Every test is checked for leftover child processes:
a test that leaves processes behind fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

pytest_plugins = sorted(
    f"kedge_fixtures.{path.stem}"
    for path in (_HERE / "kedge_fixtures").glob("*.py")
    if not path.name.startswith("_")
)
