"""The domain's closed vocabularies, in one place. Stored as plain strings in the
database (portable, Citus-friendly); validated at every edge through these enums."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    REP = "rep"
    MANAGER = "manager"
    ADMIN = "admin"


class Stage(StrEnum):
    PROSPECTING = "prospecting"
    QUALIFY = "qualify"
    APPROACH = "approach"
    NEGOTIATE = "negotiate"
    HANDLE_OBJECTIONS = "handle_objections"
    CLOSE = "close"
    AFTER_SALE = "after_sale"


STAGE_ORDER: tuple[Stage, ...] = tuple(Stage)


class LeadStatus(StrEnum):
    OPEN = "open"
    WON = "won"
    LOST = "lost"
    DISQUALIFIED = "disqualified"


class Outcome(StrEnum):
    """What a rep records when a deal is decided."""

    WON = "won"
    LOST = "lost"
    DISQUALIFIED = "disqualified"


class ForecastCategory(StrEnum):
    PIPELINE = "pipeline"
    BEST_CASE = "best_case"
    COMMIT = "commit"
    CLOSED = "closed"
    OMITTED = "omitted"


class SourceChannel(StrEnum):
    DOOR_TO_DOOR = "door_to_door"  # 逐户/地毯式
    ADVERTISING = "advertising"
    REFERRAL = "referral"  # 介绍
    DIRECTORY = "directory"  # 资料查阅
    DELEGATED_ASSISTANT = "delegated_assistant"  # 委托助手
    CUSTOMER_FILE = "customer_file"
    TRADE_FAIR = "trade_fair"  # 交易会
    PHONE = "phone"
    MAIL = "mail"
    WEB = "web"
    PARTNER = "partner"


class AccountKind(StrEnum):
    PROSPECT = "prospect"
    CUSTOMER = "customer"
    PARTNER = "partner"


class B2BKind(StrEnum):
    END_CUSTOMER = "end_customer"
    TRADER = "trader"
    SUPPLIER = "supplier"
    DISTRIBUTOR = "distributor"


class LifecycleStage(StrEnum):
    PROSPECT = "prospect"
    ACQUISITION = "acquisition"
    GROWTH = "growth"
    MATURITY = "maturity"
    DECLINE = "decline"
    CHURNED = "churned"


class BuyingRole(StrEnum):
    USER = "user"  # 使用者
    INFLUENCER = "influencer"  # 影响者
    DECISION_MAKER = "decision_maker"  # 决策者
    APPROVER = "approver"  # 批准者
    BUYER = "buyer"  # 购买者
    GATEKEEPER = "gatekeeper"  # 把关者


class ActivityKind(StrEnum):
    VISIT = "visit"  # 拜访
    CALL = "call"
    EMAIL = "email"
    MEETING = "meeting"
    DEMO = "demo"
    NOTE = "note"
    TASK = "task"


class ObjectionType(StrEnum):
    NEED = "need"
    PRICE = "price"
    PRODUCT = "product"
    COMPANY = "company"
    SALESPERSON = "salesperson"
    TIMING = "timing"
    AUTHORITY = "authority"
    ABILITY_TO_PAY = "ability_to_pay"


class HandlingMethod(StrEnum):
    DIRECT_DENIAL = "direct_denial"
    INDIRECT_DENIAL = "indirect_denial"  # "yes-but"
    COMPENSATION = "compensation"
    INQUIRY = "inquiry"
    BOOMERANG = "boomerang"  # transformation
    IGNORE = "ignore"


class ObjectionStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    UNRESOLVED = "unresolved"


class ClosingMethod(StrEnum):
    DIRECT_REQUEST = "direct_request"
    ASSUMPTIVE = "assumptive"
    ALTERNATIVE_CHOICE = "alternative_choice"
    SUMMARY = "summary"
    URGENCY = "urgency"
    TRIAL = "trial"
    CONCESSION = "concession"


class ClosingSignal(StrEnum):
    VERBAL = "verbal"
    BEHAVIOURAL = "behavioural"
    EXPRESSION = "expression"
