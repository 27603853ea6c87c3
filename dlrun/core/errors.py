"""Errors a user can cause and fix. The CLI prints them as one line, without a traceback."""


class DlrunError(Exception):
    """A problem with the user's input or environment, reported as one line."""

    exit_code = 2


class ConfigError(DlrunError):
    """A config value that is not allowed: names the key, the value and what is allowed."""

    def __init__(self, key: str, value, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!s}: {allowed}")


class DataError(DlrunError):
    """Dataset files that are missing, unreadable or corrupt."""


class DeviceError(DlrunError):
    """A requested device that this machine does not have."""

    exit_code = 1
