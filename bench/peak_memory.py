"""Peak memory of a command and every process it starts (a benchmark script, not a test).

Runs the command after ``--``, samples the proportional set size (PSS: shared pages split between the processes
that share them, so the sum over a process tree counts each page once) of the command's process and all its
descendants every ``--interval`` seconds from /proc/<pid>/smaps_rollup, and prints the peak of the sum, the peak of the
largest single process and the wall time, then one JSON line (``BENCH_JSON {...}``).

    python bench/peak_memory.py -- ctd-hf eval --engine vllm --methods od,id,ctd --prefix DIR --output-dir OUT

vLLM's engine core and workers are processes of their own; this is why resident-set tools that follow one process
(``/usr/bin/time -v``) undercount it. Linux only.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time

from machine import process_tree, pss_kib  # bench/, this script's folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    started = time.perf_counter()
    process = subprocess.Popen(command)
    peak_total = peak_single = processes = 0
    while process.poll() is None:
        sizes = [pss_kib(pid) for pid in process_tree(process.pid)]
        peak_total, peak_single = max(peak_total, sum(sizes)), max(peak_single, max(sizes, default=0))
        processes = max(processes, len(sizes))
        time.sleep(args.interval)
    wall = time.perf_counter() - started
    record = {"command": shlex.join(command), "returncode": process.returncode, "wall_s": round(wall, 1),
              "peak_pss_mib": round(peak_total / 1024), "peak_single_process_pss_mib": round(peak_single / 1024),
              "processes": processes}
    print(f"\npeak PSS of the process tree: {record['peak_pss_mib']} MiB (largest single process "
          f"{record['peak_single_process_pss_mib']} MiB, up to {processes} processes), wall {wall:.1f} s, exit "
          f"{process.returncode}", file=sys.stderr)
    print("BENCH_JSON " + json.dumps(record))
    sys.exit(process.returncode)


if __name__ == "__main__":
    main()
