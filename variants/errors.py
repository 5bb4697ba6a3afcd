"""The one error a user's input raises: ``ConfigError``, a bad key, value, file or variant, said
in one line naming what was wrong and what is allowed (the CLI prints it and exits 2). It lives
here, importing nothing, so that the variants, the harness and user code share it without any of
them importing another for it."""


class ConfigError(ValueError):
    """Invalid configuration or input: one line naming what was wrong and what is allowed."""
