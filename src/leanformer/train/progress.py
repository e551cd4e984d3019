"""Progress and logs for the training loop: a tqdm bar (steps, loss, tokens/s, ETA) and one-line messages.

Only rank 0 shows anything. The bar goes to stderr so `--json` output on stdout stays parseable; tqdm's own
``TQDM_DISABLE=1`` switches it off, as does ``--no-progress``.
"""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, *, total: int, initial: int, enabled: bool, verbose: bool, desc: str = "train"):
        self.verbose = verbose
        self.t0 = time.perf_counter()
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                            file=sys.stderr, smoothing=0.1)

    def log(self, msg: str) -> None:
        """A line above the bar (or on stderr when there is no bar)."""
        if not self.verbose:
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def update(self, *, loss: float, tokens_per_s: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.3f} | {tokens_per_s:,.0f} tok/s | lr {lr:.1e}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
