"""memlaw: write records into a frozen LLM's adapter, certify and recall them exactly, predict capacity.

On a small CPU shared by several busy processes, set `OMP_WAIT_POLICY=PASSIVE` before torch loads:
PyTorch's OpenMP workers spin while they wait, and two spinning processes on 2 cores starve each other
(a SmolLM2 forward took 15.5 s instead of 0.65 s here). Alone, spinning is faster (1.65 vs 1.30 write
steps/s on the demo), so memlaw leaves the default; its test suite and Ray actors set PASSIVE.
"""

__version__ = "0.1.0"
