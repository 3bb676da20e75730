#!/usr/bin/env python
"""Train the detector (see README.md). All logic lives in keras_frcnn_cryo.train."""
import sys

from keras_frcnn_cryo import train
from keras_frcnn_cryo.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(train.main, train.build_parser()))
