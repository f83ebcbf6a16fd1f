"""The one error hierarchy of modelrun.

Each error carries its status; the gRPC boundary (serving) and the HTTP boundary (functions) map it
once, from `grpc_code` and `http_status`. Messages are written for the person who sent the request:
they name the thing that is wrong and what was expected instead.
"""


class ModelrunError(Exception):
    """Base class. Anything else that escapes to a boundary is a bug and is reported as INTERNAL / 500."""

    grpc_code = "INTERNAL"
    http_status = 500
    code = "internal"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidInput(ModelrunError):
    grpc_code = "INVALID_ARGUMENT"
    http_status = 400
    code = "invalid_argument"


class Unauthenticated(ModelrunError):
    grpc_code = "UNAUTHENTICATED"
    http_status = 401
    code = "unauthenticated"


class NotFound(ModelrunError):
    grpc_code = "NOT_FOUND"
    http_status = 404
    code = "not_found"


class Conflict(ModelrunError):
    grpc_code = "ALREADY_EXISTS"
    http_status = 409
    code = "conflict"


class TooLarge(ModelrunError):
    grpc_code = "RESOURCE_EXHAUSTED"
    http_status = 413
    code = "too_large"


class Unprocessable(ModelrunError):
    """Well-formed but unusable: a file that is no model, training data that does not fit the model."""

    grpc_code = "FAILED_PRECONDITION"
    http_status = 422
    code = "unprocessable"


class Unavailable(ModelrunError):
    grpc_code = "UNAVAILABLE"
    http_status = 503
    code = "unavailable"


class NoGoogleCredentials(Unauthenticated):
    """No Application Default Credentials that can sign an ID token for a Google Cloud endpoint."""

    code = "no_google_credentials"


class IdTokenRefused(Unauthenticated):
    """A Cloud Run endpoint or the `api` function refused the caller: its ID token (no invoker role, a
    wrong audience), or the lack of one."""

    grpc_code = "PERMISSION_DENIED"
    http_status = 403
    code = "id_token_refused"
