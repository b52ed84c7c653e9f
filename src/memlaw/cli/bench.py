"""CLI benchmarks: `memlaw bench methods` prints the paper's main table (SFT vs MemFT) on your model."""

from __future__ import annotations

import json
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from memlaw.cli._common import app, err, nullcontext, out, run, setup_logging
from memlaw.config import PromptConfig
from memlaw.errors import ConfigError

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: the paper's tables on any model.")
app.add_typer(bench_app, name="bench")


class Benchmark(str, Enum):
    phonebook = "phonebook"
    long_context = "long-context"
    linear_rule = "linear-rule"


def _ints(values: list[str] | None, what: str) -> tuple[int, ...] | None:
    """`--ranks 1,2,4`, `--ranks "1 2 4"` or `--ranks 1 --ranks 2` → (1, 2, 4)."""
    if not values:
        return None
    parts = [p for v in values for p in re.split(r"[,\s]+", v.strip()) if p]
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--{what} takes integers such as 1,2,4; got {' '.join(values)!r}") from None


@bench_app.command("methods")
def methods(
    benchmark: Annotated[Benchmark, typer.Option(help="Which benchmark.")],
    ranks: Annotated[list[str], typer.Option(help="Adapter ranks, e.g. 1,4,16 (the table's columns).")],
    lengths: Annotated[Optional[list[str]], typer.Option(
        help="PhoneBook: PB<N> value tokens (default 160); long-context: ℓ tokens (200); "
             "linear-rule: training pairs (100).")] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps per cell, the same for every method.")] = 300,
    model: Annotated[str, typer.Option(
        help="smollm2-135m, gemma3-270m, tiny, a hub id or a local directory.")] = "smollm2-135m",
    ratio: Annotated[str, typer.Option(help="Long-context noise: r0, r20, r40, r60, r80, r100.")] = "r100",
    source: Annotated[str, typer.Option(help="Long-context document: own (built in the model's token space "
                                             "from the paper's r0 text) or paper (the paper's Qwen3 files).")] = "own",
    held_out: Annotated[int, typer.Option(help="Linear rule: held-out pairs for generalization.")] = 100,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-2,
    batch_size: Annotated[int, typer.Option(help="Records per step (long-context: 1).")] = 16,
    adapter: Annotated[str, typer.Option(help="probe (the paper's) or lora.")] = "probe",
    layer: Annotated[Optional[int], typer.Option(help="Probe layer (default: the paper's relative depth).")] = None,
    seed: Annotated[int, typer.Option(help="Seed (adapter init, order, dropout, data).")] = 0,
    dtype: Annotated[str, typer.Option(help="auto (bf16 where fast), bfloat16 or float32.")] = "auto",
    template: Annotated[Optional[str], typer.Option(
        help="Prompt template: chat or plain (default: chat if the tokenizer has one).")] = None,
    out_file: Annotated[Optional[Path], typer.Option(
        "--out", "--store", help="JSONL file: one row per cell with its full metrics; cells already there "
                                 "are not run again.")] = None,
    threads: Annotated[Optional[int], typer.Option(
        help="torch CPU threads (1 is fastest when other jobs share the CPU).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON instead of the table.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """SFT vs MemFT-OT vs MemFT-SW over ranks × lengths at an equal step budget: the paper's main table."""
    setup_logging(verbose)

    def go():
        from memlaw.benchmarks.methods import MethodsGrid, append_row, read_rows, run_methods
        from memlaw.models import load_base

        if threads is not None:
            import torch

            torch.set_num_threads(max(1, threads))
        grid = MethodsGrid(benchmark=benchmark.value, ranks=_ints(ranks, "ranks"), lengths=_ints(lengths, "lengths"),
                           steps=steps, lr=lr, batch_size=batch_size, adapter=adapter, layer=layer, ratio=ratio,
                           source=source, held_out=held_out, seed=seed, prompt=PromptConfig(template=template))
        done = read_rows(out_file) if out_file is not None else {}
        base = load_base(model, dtype=dtype)
        total = len(grid.grid_lengths) * len(grid.ranks) * len(grid.methods)
        bar = Progress(TextColumn("[bold]cells"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                       TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True) \
            if sys.stderr.isatty() and not as_json else None
        task = bar.add_task("", total=total) if bar is not None else None

        def on_cell(row: dict, index: int, total: int) -> None:
            if out_file is not None:
                append_row(out_file, row)
            if bar is not None:
                bar.update(task, completed=index)
            if not as_json:
                err.print(f"cell {index}/{total}  {row['method']:<9} r{row['rank']:<4} length {row['length']:<6} "
                          f"{_fmt(row['score'])}  ({row['wall_s']:.1f} s)", markup=False)

        with bar if bar is not None else nullcontext():
            rows = run_methods(grid, base, done=done, on_cell=on_cell)
        if as_json:
            out.print_json(json.dumps(rows))
            return
        out.print(methods_table(rows, grid, base.name))
        ran = [r for r in rows if r["cell_id"] not in done]
        wall = sum(r["wall_s"] for r in ran)
        reused = f", {len(rows) - len(ran)} from {out_file}" if out_file is not None else ""
        out.print(f"{len(rows)} cells ({len(ran)} run{reused}), {grid.steps} optimizer steps each, {wall:.0f} s"
                  + (f"; rows in {out_file}" if out_file is not None else ""), markup=False)

    run(go)


def _fmt(score) -> str:
    from memlaw.benchmarks.methods import format_score

    return format_score(score)


def methods_table(rows: list[dict], grid, model: str) -> Table:
    """Methods as rows, ranks or lengths as columns, the best cell of each column in bold."""
    from memlaw.benchmarks.methods import CELL_METRIC, table

    columns, cells = table(rows)
    what = {"long-context": f"long-context {grid.ratio} ({grid.source})", "phonebook": "PhoneBook",
            "linear-rule": f"linear rule, {grid.held_out} held out"}[grid.benchmark]
    t = Table(title=f"{what} on {model}", caption=f"{CELL_METRIC[grid.benchmark]}; {grid.adapter}, "
                                                  f"{grid.steps} steps per cell")
    t.add_column("method")
    for c in columns:
        t.add_column(c, justify="right", no_wrap=True)
    best = {c: max((cells[m][c] for m in cells if c in cells[m]), key=_key, default=None) for c in columns}
    for method, by_col in cells.items():
        shown = []
        for c in columns:
            v = by_col.get(c)
            text = _fmt(v)
            shown.append(f"[bold]{text}[/bold]" if v is not None and _key(v) == _key(best[c]) else text)
        t.add_row(method, *shown)
    return t


def _key(score):
    """Order for 'best': the number, or for the linear rule generalization first, then memory."""
    return (score[1], score[0]) if isinstance(score, (list, tuple)) else score
