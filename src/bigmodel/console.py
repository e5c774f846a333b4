"""Console logging that shares the terminal with tqdm's progress bar.

configs/hydra/default.yaml makes this the console handler: a log line written while a bar is on
screen would start on the bar's line and be overwritten by its next refresh, so each line goes
through `tqdm.write`, which clears the bars, prints the line and draws the bars again below it.
"""

import logging

from tqdm import tqdm


class TqdmHandler(logging.StreamHandler):
    """A StreamHandler (same `stream` argument) whose lines are printed above any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except (OSError, ValueError):  # a closed or broken stream: logging's own report, as StreamHandler does
            self.handleError(record)
