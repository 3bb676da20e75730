"""``python -m keras_frcnn_cryo.synthetic``: write a synthetic dataset (see dataset.build_parser)."""
import sys

from .dataset import console_main

sys.exit(console_main())
