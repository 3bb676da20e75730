#!/usr/bin/env python
"""Measure AP, F1 and mean IoU (see README.md). All logic lives in keras_frcnn_cryo.evaluation."""
import sys

from keras_frcnn_cryo import evaluation

if __name__ == "__main__":
    sys.exit(evaluation.console_main())
