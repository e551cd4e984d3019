"""`python -m leanformer` is the same as the `leanformer` command."""
from leanformer.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
