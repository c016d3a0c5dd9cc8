"""The serving error: answered in vLLM's error shape, so a client of vLLM reads ours the same way."""

from __future__ import annotations

from fastapi.responses import JSONResponse


class ServeError(Exception):
    """An error answered in vLLM's shape ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, err_type: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.err_type, "param": None,
                                       "code": self.status}}, status_code=self.status)  # fmt: skip
