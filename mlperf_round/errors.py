"""Errors a stage reports as one line; the exit code says whose fault it was."""

import argparse


class RoundError(Exception):
    """A known failure: reported as one line, never as a traceback."""

    exit_code = 1


class ParamsError(RoundError):
    """params.yaml (or a command-line argument) is wrong; nothing was computed."""

    exit_code = 2


class InputError(RoundError):
    """A checkpoint, dataset or log is missing or corrupt."""

    exit_code = 3


class AccuracyError(RoundError):
    """The optimized model missed its accuracy target."""

    exit_code = 4


class ComplianceError(RoundError):
    """A compliance audit (TEST01, TEST04, TEST06) failed its verification."""

    exit_code = 5


class TransientError(RoundError):
    """The network or a remote service failed (timeout, refused, 5xx): trying again may succeed.

    The exit code is EX_TEMPFAIL, the one orchestrators (the Prefect flow) retry on.
    """

    exit_code = 75


class OneLineParser(argparse.ArgumentParser):
    """Bad command-line arguments are a ParamsError: one line, exit 2, like every bad input (argparse prints usage
    too)."""

    def error(self, message: str):
        # an argument may carry a newline or other control characters; the message stays one line
        raise ParamsError(f"{self.prog}: {message}".encode("unicode_escape").decode("ascii"))
