"""The tenant's own settings: pipeline gates, thresholds, probabilities, cadence."""

from __future__ import annotations

import time
import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from canvass.errors import NotFound
from canvass.pipeline.config import PipelineConfig, decode_config, encode_config
from canvass.pipeline.models import Organization

# Display-only reads (a lead's probability in a response) may use a config a few
# seconds old; rule checks always read it fresh inside their transaction.
_CACHE_SECONDS = 10.0
_cache: dict[uuid.UUID, tuple[float, PipelineConfig]] = {}


async def pipeline_config(session: AsyncSession, organization_id: uuid.UUID) -> PipelineConfig:
    raw = await session.scalar(select(Organization.settings).where(Organization.id == organization_id))
    if raw is None:
        raise NotFound(f"No organization {organization_id}.")
    config = decode_config(raw)
    _cache[organization_id] = (time.monotonic() + _CACHE_SECONDS, config)
    return config


async def cached_pipeline_config(session: AsyncSession, organization_id: uuid.UUID) -> PipelineConfig:
    hit = _cache.get(organization_id)
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    return await pipeline_config(session, organization_id)


async def update_pipeline_config(
    session: AsyncSession, organization_id: uuid.UUID, config: PipelineConfig
) -> PipelineConfig:
    org = await session.get(Organization, organization_id)
    if org is None:
        raise NotFound(f"No organization {organization_id}.")
    org.settings = encode_config(config)
    await session.flush()
    _cache.pop(organization_id, None)
    return config
