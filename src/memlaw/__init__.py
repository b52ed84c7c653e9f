"""memlaw: write records into a frozen LLM's adapter, certify and recall them exactly, predict capacity.

    from memlaw import Memory, write_memory

    out = write_memory([{"key": "Ada:", "value": "1815"}], model="smollm2-135m", out="ada-adapter")
    out.raise_unless_certified()                  # NotCertifiedError unless every record certified
    with Memory.open("ada-adapter") as mem:
        mem.recall(["Ada:"])                      # -> ["1815"]

The names below load lazily (PEP 562), so `import memlaw` and the CLI's refusals of bad input stay
fast: torch is imported only when a model is needed.

On a small CPU shared by several busy processes, set `OMP_WAIT_POLICY=PASSIVE` before torch loads:
PyTorch's OpenMP workers spin while they wait, and two spinning processes on 2 cores starve each other
(docs/performance.md has the measurement). Alone, spinning is faster, so memlaw leaves the default;
its test suite and Ray actors set PASSIVE.
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "write_memory": "memlaw.memory", "Memory": "memlaw.memory", "WriteOutcome": "memlaw.memory",
    "Record": "memlaw.records", "load_records": "memlaw.records",
    "AdapterConfig": "memlaw.config", "ObjectiveConfig": "memlaw.config", "PromptConfig": "memlaw.config",
    "TrainConfig": "memlaw.config",
    "MemlawError": "memlaw.errors", "NotCertifiedError": "memlaw.errors",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'memlaw' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["__version__", *_LAZY]
