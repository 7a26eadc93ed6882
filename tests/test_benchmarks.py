"""The benchmark scripts run (issue 25): each in its smoke mode, tens of steps, so they cannot rot. Speed itself is
measured by running them on a quiet machine, never asserted here."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "benchmarks"


def run(*argv: str, timeout: int = 240) -> str:
    out = subprocess.run([sys.executable, str(BENCH / argv[0]), *argv[1:]], capture_output=True, text=True,
                         timeout=timeout, cwd=BENCH.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_throughput_smoke_prints_the_ratio_table():
    out = run("throughput.py", "--smoke", "--threads", "1")
    assert "| 32, 1, 64, 8, 256 |" in out and "K=1 ÷ ref. compiled" in out


def test_throughput_switches_smoke_prints_a_row_per_switch():
    out = run("throughput.py", "--smoke", "--switches", "--threads", "1")
    sys.path.insert(0, str(BENCH))
    try:
        import throughput
    finally:
        sys.path.remove(str(BENCH))
    for name in throughput.SWITCHES:
        assert f"| {name} | " in out and "x |" in out.split(f"| {name} | ")[1].split("\n")[0], name


def test_busy_machine_smoke_prints_the_quiet_and_busy_tables():
    out = run("busy_machine.py", "--smoke")
    assert "| reference loop (OpenMP default) |" in out and "| auto | " in out
    assert "beside a second run" in out and out.count("| auto | ") == 2


def test_busy_machine_rejects_an_unknown_policy():
    out = subprocess.run([sys.executable, str(BENCH / "busy_machine.py"), "--policies", "bogus"], capture_output=True,
                         text=True)
    assert out.returncode == 2 and "--policies: unknown bogus" in out.stderr


@pytest.mark.parametrize("script,argv", [
    ("profile_step.py", ["--shape", "32", "1", "32", "2", "256", "--steps", "1", "--warmup", "1", "--threads", "1"]),
    ("monitor_overhead.py", ["--rounds", "1", "--shapes", "micro"]),
])
def test_the_other_benchmarks_run_briefly(script, argv):
    assert run(script, *argv).strip()
