"""Stand-in app/logger.py (comfyfleet tests): ComfyUI's console log format. ComfyUI
0.3.64 writes each record as its bare message; later ones (0.33.0's app/logger.py,
its ColoredFormatter) start every record with an ANSI colour code and "[LEVEL] ",
bold from WARNING up, with no check for a terminal. A record of several lines (a
traceback) carries the tag on its first line only."""
import logging
import sys

RESET = "\033[0m"
BOLD = "\033[1m"
LEVEL_COLOURS = {
    "DEBUG": "\033[36m",
    "DETAIL": "\033[34m",
    "INFO": "\033[32m",
    "WARNING": "\033[33m",
    "ERROR": "\033[31m",
    "CRITICAL": "\033[35m",
}


class ColoredFormatter(logging.Formatter):
    def format(self, record):
        bold = BOLD if record.levelno >= logging.WARNING else ""
        tag = f"{bold}{LEVEL_COLOURS.get(record.levelname, '')}[{record.levelname}]{RESET} "
        return tag + super().format(record)


def setup_logger(coloured):
    """Records at INFO and up to stderr, as ComfyUI's default console handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ColoredFormatter("%(message)s") if coloured else logging.Formatter("%(message)s"))
    logger = logging.getLogger()
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
