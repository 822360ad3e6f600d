"""`python -m datasets.synthetic`: see datasets/synthetic/cli.py."""
import sys

from datasets.synthetic.cli import main

sys.exit(main())
