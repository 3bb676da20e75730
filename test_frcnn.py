#!/usr/bin/env python
"""Detect organelles in images (see README.md). All logic lives in keras_frcnn_cryo.predict."""
import sys

from keras_frcnn_cryo import predict
from keras_frcnn_cryo.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(predict.main, predict.build_parser()))
