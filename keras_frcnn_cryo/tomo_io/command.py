"""``python -m keras_frcnn_cryo.tomo_io export``: slices of a volume as PNGs with sidecars, for labelling."""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from .mrc import MRC_EXTENSIONS, VOLUME_KINDS, _positive_int
from .slices import export_slices_for_labelling


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """``python -m keras_frcnn_cryo.tomo_io export ...`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_frcnn_cryo.tomo_io", description="MRC volume and tilt-series utilities."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser(
        "export", help="write slices as 8-bit PNGs (+ .json sidecars) for labelling in LabelImg",
        description="Write chosen slices (0-based indices) of a tomogram or tilt series as 8-bit PNGs, "
                    "each with a PNG.json sidecar recording source, index, angle, pixel size and binning.",
    )
    export.add_argument("--input", required=True, help="MRC tomogram or tilt series (" + " ".join(MRC_EXTENSIONS) + ")")
    export.add_argument("--out", required=True, help="output folder")
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--z", type=int, nargs="+", metavar="INDEX", help="slice / tilt indices, 0-based")
    which.add_argument("--every", type=int, metavar="N", help="every N-th slice, starting at 0")
    export.add_argument("--slab", type=int, default=1, help="average N neighbouring slices (tomograms; default 1)")
    export.add_argument("--bin", dest="binning", type=int, default=1, help="block-mean binning in x and y (default 1)")
    export.add_argument("--apix", type=float, default=None, help="pixel size in Angstrom (overrides the header)")
    export.add_argument("--kind", choices=VOLUME_KINDS, default="auto", help="volume kind (default: auto)")
    export.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    return parser


def main(args: argparse.Namespace) -> int:
    """``python -m keras_frcnn_cryo.tomo_io export``: slices as PNGs with sidecars, for labelling."""
    if args.every is not None:
        indices: Sequence[int] | slice = slice(0, None, _positive_int(args.every, "--every"))
    else:
        indices = args.z
    paths = export_slices_for_labelling(args.input, args.out, indices, kind=args.kind, slab=args.slab,
                                        binning=args.binning, apix=args.apix)
    print(f"wrote {len(paths)} PNG(s) with .json sidecars to {args.out} (slice numbers 0-based)")
    return 0


def console_main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 with one ``error:`` line on bad input)."""
    from ..cli import run_cli
    return run_cli(main, build_parser(), argv)
