#!/usr/bin/env python
"""Detect organelles in images (see README.md). All logic lives in keras_frcnn_cryo.predict."""
import sys

from keras_frcnn_cryo import predict

if __name__ == "__main__":
    sys.exit(predict.console_main())
