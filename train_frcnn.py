#!/usr/bin/env python
"""Train the detector (see README.md). All logic lives in keras_frcnn_cryo.train."""
import sys

from keras_frcnn_cryo import train

if __name__ == "__main__":
    sys.exit(train.console_main())
