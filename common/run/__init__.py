"""A run from the driver's side: the command line, set-up and checks, the loop's pieces, outputs, checkpoints, failures.

May import: every package."""
