"""Shared test set-up: quiet TensorFlow, fixed terminal width for CLI output, and
short whole-model passes in profiles."""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("COLUMNS", "120")


@pytest.fixture(autouse=True)
def _short_whole_passes(monkeypatch):
    """A profile times each pass of the whole models for 0.05 s here, not a second:
    what the tests check of them does not depend on the length."""
    from morphcli.steps import profile

    monkeypatch.setattr(profile, "WHOLE_TIME", 0.05)
