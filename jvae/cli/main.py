"""The ``jvae`` command: ``train``, ``eval`` and ``sample`` (layer 6)."""

from __future__ import annotations

import sys

from jvae.cli.args import build_parser
from jvae.io.files import eprint


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  from jvae.cli import run  # heavy imports only after the arguments are valid

  try:
    if args.command == "train":
      return run.train(args, parser)
    if args.command == "eval":
      return run.evaluate_run(args, parser)
    return run.sample_run(args, parser)
  except run.UsageError as err:
    parser.error(str(err))
  except (FileNotFoundError, run.DataIntegrityError) as err:
    eprint(f"jvae: error: {err}")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
