"""Expected errors of the app's use cases, each with the HTTP status it answers as.

Raised by the domains and by support; `api/errors.py` renders them as JSON, the support
CLI prints them. No web framework here.
"""


class AppError(Exception):
    status_code = 400
    error = "Bad request"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: object,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code or self.status_code
        self.error = error or self.error
        self.headers = headers
        self.extra = extra


class NotFound(AppError):
    status_code = 404
    error = "Not found"


class Unavailable(AppError):
    status_code = 503
    error = "Service unavailable"


class NotAuthenticated(AppError):
    status_code = 401
    error = "Not authenticated"

    def __init__(self, message: str = "Log in to continue.") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})
