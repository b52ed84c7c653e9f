"""memlaw: write records into a frozen LLM's adapter, certify and recall them exactly, predict capacity."""

import os

# PyTorch's OpenMP workers spin while they wait. On a small shared CPU (2 cores here) two busy
# processes then starve each other: a SmolLM2 forward took 15.5 s instead of 0.65 s with passive
# waiting. Must be set before torch loads OpenMP; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
