"""Fixtures of the forecasting tests: small synthetic tenants, built once per session."""

from __future__ import annotations

import pytest

from canvass.forecasting.history import LeadHistory
from canvass.forecasting.synthetic import TenantProfile, synthetic_tenant

SMALL = TenantProfile(start="2021-01-01", days=540, leads_per_day=8.0, median_cycle_days=20.0)


@pytest.fixture(scope="session")
def small_tenant() -> LeadHistory:
    return synthetic_tenant(SMALL, seed=7)
