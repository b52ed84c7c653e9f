"""Benchmarks are data builders: data in, `Record`s out (no special code paths)."""

from memlaw.benchmarks.phonebook import phonebook

__all__ = ["phonebook"]
