"""The error raised for data the user must fix or fetch; the CLI prints it as one line."""


class DataError(RuntimeError):
    pass
