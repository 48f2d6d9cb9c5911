"""Bodies of the JSON endpoint the student pages call."""

from pydantic import BaseModel


class ToolCredentials(BaseModel):
    """The student's own login for one ready tool."""

    tool: str
    label: str
    url: str
    username: str
    password: str
    development: bool
    details: dict[str, str]
