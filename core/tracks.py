"""The catalogue: what each track costs, which tools it gets and its first project.

Plain constants with no I/O, so workflow code may import them deterministically.
"""

from dataclasses import dataclass
from typing import Literal, get_args

DP = "DP"
FSD = "FSD"
# The track codes as a type, for request schemas (checked against TRACKS below).
TrackCode = Literal["DP", "FSD"]

# Tool names are stable identifiers: they appear in workflow ids of activities, in the
# tool_account table, in search attributes and in support commands.
TOOL_POSTGRES = "postgres"
TOOL_SUPERSET = "superset"
TOOL_PREFECT = "prefect"
TOOL_JUPYTER = "jupyter"
TOOL_CODESERVER = "codeserver"
ALL_TOOLS = (TOOL_POSTGRES, TOOL_SUPERSET, TOOL_PREFECT, TOOL_JUPYTER, TOOL_CODESERVER)


@dataclass(frozen=True)
class Track:
    code: str
    title: str
    price_cents: int
    currency: str
    tools: tuple[str, ...]
    summary: str
    includes: tuple[str, ...]


TRACKS: dict[str, Track] = {
    DP: Track(
        code=DP,
        title="Data Professional",
        price_cents=49_900,
        currency="usd",
        tools=(TOOL_POSTGRES, TOOL_SUPERSET, TOOL_PREFECT, TOOL_JUPYTER),
        summary="SQL, pipelines, dashboards and notebooks on your own data stack.",
        includes=(
            "Your own PostgreSQL schema",
            "Superset dashboards",
            "Prefect work pool for pipelines",
            "A Jupyter workspace",
        ),
    ),
    FSD: Track(
        code=FSD,
        title="Full-Stack Developer",
        price_cents=59_900,
        currency="usd",
        tools=(TOOL_CODESERVER,),
        summary="Build and ship web applications from a browser-based VS Code.",
        includes=("A code-server (VS Code) workspace", "Project reviews", "Deployment guides"),
    ),
}

TOOL_LABELS = {
    TOOL_POSTGRES: "PostgreSQL schema",
    TOOL_SUPERSET: "Superset",
    TOOL_PREFECT: "Prefect",
    TOOL_JUPYTER: "Jupyter",
    TOOL_CODESERVER: "code-server",
}

assert set(get_args(TrackCode)) == set(TRACKS), "TrackCode must list every track"
