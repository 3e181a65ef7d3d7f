"""How fast the command line answers, and how long the default run takes (the issue's bars: < 1 s, < 60 s).

    python scripts/bench_cli_startup.py [--repeats 3] [--skip-train]

Runs the installed ``dgmrun`` in a temporary directory and prints the median wall time of each command.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time

COMMANDS = {
    "dgmrun --help": ["--help"],
    "dgmrun --cfg job": ["--cfg", "job"],
    "dgmrun data.batch_size=0 (config error)": ["data.batch_size=0"],
    "dgmrun (default run: VAE on digits, train+test+samples)": ["hydra.run.dir=run"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    exe = shutil.which("dgmrun") or "dgmrun"
    print(f"| command | median wall s (of {args.repeats}) |\n|---|---|")
    for name, argv in COMMANDS.items():
        if args.skip_train and "default run" in name:
            continue
        times = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as cwd:
                start = time.perf_counter()
                subprocess.run([exe, *argv], cwd=cwd, capture_output=True)
                times.append(time.perf_counter() - start)
        print(f"| `{name}` | {statistics.median(times):.2f} |")


if __name__ == "__main__":
    main()
