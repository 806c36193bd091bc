"""How long `photobg COMMAND --help` takes, and whether it imports torch / diffusers.

Each command's help runs in a fresh Python process (`python -m photobg COMMAND --help`), `--repeats` times;
the table gives the median wall time. Run it against another checkout's sources to compare, e.g. before a
change:

    python bench/cli_startup.py
    PYTHONPATH=/path/to/other/checkout/src python bench/cli_startup.py
"""

import argparse
import statistics
import subprocess
import sys
import time

PROBE = """
import sys
from photobg.cli import main
try:
    main([{command!r}, "--help"])
except SystemExit:
    pass
print("torch" in sys.modules, "diffusers" in sys.modules, file=sys.stderr)
"""


def time_help(command, repeats):
    """(median seconds, imports torch, imports diffusers) of `photobg COMMAND --help` in fresh processes."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", PROBE.format(command=command)], capture_output=True, text=True, check=True
        )
        times.append(time.perf_counter() - start)
    torch_loaded, diffusers_loaded = done.stderr.strip().splitlines()[-1].split()
    return statistics.median(times), torch_loaded == "True", diffusers_loaded == "True"


def main():
    from photobg.cli import COMMANDS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per command (default: %(default)s)")
    parser.add_argument("commands", nargs="*", default=list(COMMANDS), help="commands to time (default: all)")
    args = parser.parse_args()
    print("| command | `--help` seconds (median) | imports torch | imports diffusers |")
    print("| --- | --- | --- | --- |")
    for command in args.commands:
        seconds, torch_loaded, diffusers_loaded = time_help(command, args.repeats)
        print(
            f"| {command} | {seconds:.2f} | {'yes' if torch_loaded else 'no'} | {'yes' if diffusers_loaded else 'no'} |"
        )


if __name__ == "__main__":
    main()
