"""Test fixtures shared by every kind of test (loaded as pytest plugins by tests/conftest.py)."""
