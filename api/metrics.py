"""GET /metrics: the API's Prometheus metrics (text exposition format).

Not behind a login, like every Prometheus target: expose it only on the internal network
(the compose file does not publish it through a proxy; see the README).
"""

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

router = APIRouter(tags=["operations"], include_in_schema=False)


@router.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
