"""The one error type users see: it names what is wrong and how to fix it (exit code 2 on the CLI)."""


class UserError(Exception):
    """Bad input from the user (a path, a name, a file, a field). `str()` is one line: what, where, fix."""

    def __init__(self, what: str, fix: str = ""):
        self.what = what
        self.fix = fix
        super().__init__(f"{what.rstrip('.')}. {fix}" if fix else what)
