"""The ``jvae`` command: ``train``, ``eval``, ``gap`` and ``sample`` (layer 6).

Exit status: 0 on success, 2 for a usage error (an impossible option or combination, reported
before anything is written), 1 when a run directory or data cannot be used as asked, 130 when
interrupted (SIGINT), each with one line on stderr rather than a traceback.
"""

from __future__ import annotations

import sys

from jvae.cli.args import UsageError, build_parser, check_train_options, explicit_train_options
from jvae.io.files import eprint

INTERRUPTED = 130


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.command == "train":
    args.given = explicit_train_options(argv[1:])
    if args.resume is None:
      try:
        check_train_options(args, args.given)  # before any file is written or module imported
      except UsageError as err:
        parser.error(str(err))
  try:
    from jvae.cli import run  # heavy imports only after the arguments are valid

    try:
      if args.command == "train":
        return run.train(args, parser)
      if args.command == "eval":
        return run.evaluate_run(args, parser)
      if args.command == "gap":
        from jvae.cli import inference

        return inference.gap_run(args, parser)
      return run.sample_run(args, parser)
    except UsageError as err:
      parser.error(str(err))
    except (FileNotFoundError, run.DataIntegrityError, run.RunError) as err:
      eprint(f"jvae: error: {err}")
      return 1
  except KeyboardInterrupt:
    eprint("jvae: interrupted")
    return INTERRUPTED
  return 0


if __name__ == "__main__":
  sys.exit(main())
