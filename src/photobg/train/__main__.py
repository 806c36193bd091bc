"""`python -m photobg.train`: `photobg train` under the module's name."""

import argparse
import sys

from . import HELP, add_arguments, run

parser = add_arguments(argparse.ArgumentParser(prog="python -m photobg.train", description=HELP))
sys.exit(run(parser.parse_args()))
