"""``python -m keras_frcnn_cryo.tomo_io export ...`` (see command.build_parser)."""
import sys

from .command import console_main

sys.exit(console_main())
