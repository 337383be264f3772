"""Shared test set-up: quiet TensorFlow and fixed terminal width for CLI output."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("COLUMNS", "120")
