"""memlaw: write records into a frozen LLM's adapter, certify and recall them exactly, predict capacity."""

__version__ = "0.1.0"
