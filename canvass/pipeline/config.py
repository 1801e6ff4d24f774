"""Per-organization pipeline configuration: which gates are on, their thresholds,
stage probabilities and after-sale cadence. Stored as JSON on the organization and
decoded into these structs, so every default lives here and nowhere else."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from canvass.pipeline.vocabulary import Stage


class QualifyGate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    # Qualification score (0–100) a lead needs to leave `qualify`.
    threshold: Annotated[int, msgspec.Meta(ge=0, le=100)] = 60


class ApproachGate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    min_completed_visits: Annotated[int, msgspec.Meta(ge=0, le=50)] = 1


class SimpleGate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True


class Gates(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    prospecting: SimpleGate = msgspec.field(default_factory=SimpleGate)
    qualify: QualifyGate = msgspec.field(default_factory=QualifyGate)
    approach: ApproachGate = msgspec.field(default_factory=ApproachGate)
    negotiate: SimpleGate = msgspec.field(default_factory=SimpleGate)
    handle_objections: SimpleGate = msgspec.field(default_factory=SimpleGate)


# Defaults until the organization's own history is rich enough to learn them.
DEFAULT_STAGE_PROBABILITIES: dict[Stage, float] = {
    Stage.PROSPECTING: 0.05,
    Stage.QUALIFY: 0.10,
    Stage.APPROACH: 0.20,
    Stage.NEGOTIATE: 0.40,
    Stage.HANDLE_OBJECTIONS: 0.55,
    Stage.CLOSE: 0.75,
    Stage.AFTER_SALE: 1.0,
}


class PipelineConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    gates: Gates = msgspec.field(default_factory=Gates)
    # Stages left out keep their default probability.
    stage_probabilities: dict[Stage, Annotated[float, msgspec.Meta(ge=0, le=1)]] = msgspec.field(
        default_factory=lambda: dict(DEFAULT_STAGE_PROBABILITIES)
    )
    # After-sale callbacks (回访), days after the order.
    follow_up_days: Annotated[list[Annotated[int, msgspec.Meta(ge=1, le=3650)]], msgspec.Meta(max_length=20)] = (
        msgspec.field(default_factory=lambda: [3, 7, 30])
    )
    contact_cycle_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 30  # 两次联系间隔不得超过一个月

    def probabilities(self) -> dict[Stage, float]:
        """Every stage's probability: the organization's where set, else the default."""
        return {**DEFAULT_STAGE_PROBABILITIES, **self.stage_probabilities}


def decode_config(raw: dict[str, Any] | None) -> PipelineConfig:
    return msgspec.convert(raw or {}, PipelineConfig)


def encode_config(config: PipelineConfig) -> dict[str, Any]:
    return msgspec.to_builtins(config)  # type: ignore[no-any-return]
