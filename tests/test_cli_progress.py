"""Progress lines when stderr is not a terminal, and other libraries' deprecation noise kept out."""

import warnings

import pytest
from typer.testing import CliRunner

from memlaw.cli import app
from memlaw.cli._common import quiet_third_party_warnings
from memlaw.cli.progress import EVERY_ENV, Lines, duration, every_seconds, step_lines, verify_lines
from memlaw.errors import ConfigError
from memlaw.records import write_records
from memlaw.train import StepInfo
from memlaw.verify import VerifyProgress

runner = CliRunner()


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_duration():
    assert [duration(x) for x in (0, 44.6, 60, 187, 3600, 7530, None)] == ["0s", "45s", "1m00s", "3m07s", "1h00m",
                                                                            "2h05m", "?"]


def test_every_seconds_from_the_environment(monkeypatch):
    monkeypatch.delenv(EVERY_ENV, raising=False)
    assert every_seconds() == 30.0
    monkeypatch.setenv(EVERY_ENV, "2.5")
    assert every_seconds() == 2.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(EVERY_ENV, bad)
        with pytest.raises(ConfigError, match=EVERY_ENV):
            every_seconds()


def test_step_lines_at_intervals_with_counts_and_eta():
    clock, printed = Clock(), []
    lines = Lines(10.0, clock=clock, write=printed.append)
    on_step = step_lines("write", "certified", tty=False, lines=lines)
    assert step_lines("write", "certified", tty=True) is None          # a terminal gets the bar instead
    for step in range(1, 41):                                          # 2 s a step; checks every 10 steps
        clock.t = 2.0 * step
        checked = step % 10 == 0
        on_step(StepInfo(step, 200, 1.0 / step, 50 - step if checked else None, step // 10 if checked else None,
                         64, clock.t))
    assert printed[0].startswith("write: training 64 records, at most 200 steps, until every record certifies")
    steps = printed[1:]                      # the start line (t = 2) restarts the interval: t = 12, 22, ..., 72
    assert [int(s.split()[2].split("/")[0]) for s in steps] == [6, 11, 16, 21, 26, 31, 36]
    assert steps[0].startswith("write: step 6/200  certified ?/64")    # before the first check
    # step 21: certified 2 and stubborn 30 from the check at step 20; ETA = 42 s / 21 steps * 179 steps left
    assert steps[3] == ("write: step 21/200  certified 2/64 records  stubborn 30 tokens  loss 0.0476  elapsed 42s  "
                        "ETA ≤ 5m58s (step budget)")
    budget = []
    on_step = step_lines("update", "budget", tty=False, lines=Lines(0.0, clock=clock, write=budget.append))
    clock.t = 100.0
    on_step(StepInfo(50, 100, 0.5, None, None, 8, 100.0))
    assert budget[-1].endswith("ETA 1m40s")


def test_verify_lines_per_pass():
    clock, printed = Clock(), []
    on_progress = verify_lines(tty=False, lines=Lines(5.0, clock=clock, write=printed.append), clock=clock)
    for i in range(1, 11):
        clock.t = 2.0 * i
        on_progress(VerifyProgress("certificate", 64 * i, 640, 60 * i, 3 * i))
    assert printed[0] == "verify: certificate 192/640 records  certified 180/192  stubborn 9 tokens  elapsed 6s  " \
                         "ETA of this pass 9s"             # 4 s since the pass began (t = 2) for 128 more rows
    assert verify_lines(tty=True) is None


def test_write_prints_progress_lines_when_stderr_is_not_a_terminal(tmp_path, monkeypatch, tiny_records):
    monkeypatch.setenv(EVERY_ENV, "0")
    write_records(tmp_path / "mem.jsonl", tiny_records)
    res = runner.invoke(app, ["write", str(tmp_path / "mem.jsonl"), "--model", "tiny", "--rank", "8", "--layer", "1",
                              "--template", "plain", "--lr", "0.03", "--batch-size", "8", "--max-steps", "30",
                              "--until", "budget", "--dtype", "float32", "--out", str(tmp_path / "ad"), "--json"])
    assert res.exit_code in (0, 1), res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("write: step")]
    assert len(lines) == 30 and lines[-1].startswith("write: step 30/30  certified ")
    assert "stubborn" in lines[9] and "?" not in lines[9]               # step 10 is a check step
    assert not any(r.value in res.stderr for r in tiny_records)
    res = runner.invoke(app, ["verify", str(tmp_path / "ad")])
    assert any(ln.startswith("verify: certificate 8/8 records  certified") for ln in res.stderr.splitlines())
    assert any(ln.startswith("verify: recall 8/8 records") for ln in res.stderr.splitlines())


def test_third_party_deprecation_warnings_are_kept_out(tiny_base):
    from memlaw.adapters import make_adapter
    from memlaw.config import AdapterConfig

    def attach_lora():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            setup()
            ad = make_adapter(AdapterConfig(kind="lora", rank=4), tiny_base)
            ad.attach(tiny_base)            # transformers warns here: `is_gradient_checkpointing` is deprecated
            ad.detach()
            warnings.warn("memlaw's own", FutureWarning)
        return [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]

    setup = lambda: None  # noqa: E731
    assert any("is_gradient_checkpointing" in m for m in attach_lora())   # the noise is real here...
    setup = quiet_third_party_warnings  # noqa: E731
    assert attach_lora() == ["memlaw's own"]                              # ...and gone, but not our own warnings
