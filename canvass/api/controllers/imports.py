"""Bulk import of leads with their history (NDJSON), for partners migrating from
another CRM. Each line is validated on its own; the reply lists rejected lines by
number and field, and the good lines are written in one transaction."""

from __future__ import annotations

import msgspec
from litestar import Controller, Request, post
from litestar.status_codes import HTTP_200_OK

from canvass.api.deps import CurrentActor, Db
from canvass.api.problems import PROBLEM_RESPONSES
from canvass.api.security import managers_and_admins
from canvass.pipeline.services.imports import ImportReport, LeadImportRow, RejectedRow, import_leads

# An import is larger than an ordinary request; still bounded.
MAX_IMPORT_BYTES = 32 * 1024 * 1024
MAX_IMPORT_ROWS = 100_000
_decoder = msgspec.json.Decoder(LeadImportRow)


def parse_ndjson(body: bytes) -> tuple[list[tuple[int, LeadImportRow]], list[RejectedRow]]:
    """Lines that decode into rows (with their line numbers) and those that do not."""
    rows: list[tuple[int, LeadImportRow]] = []
    rejected: list[RejectedRow] = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, _decoder.decode(line)))
        except msgspec.ValidationError as error:
            message = str(error)
            field = message.rsplit("at `$.", 1)[1].rstrip("`") if "at `$." in message else "line"
            rejected.append(RejectedRow(row=number, external_ref=None, field=field, message=message))
        except msgspec.DecodeError as error:
            rejected.append(RejectedRow(row=number, external_ref=None, field="line", message=f"not JSON: {error}"))
    return rows, rejected


class ImportController(Controller):
    path = "/api/v1/imports"
    tags = ["imports"]

    @post(
        "/leads",
        operation_id="importLeads",
        responses=PROBLEM_RESPONSES,
        status_code=HTTP_200_OK,
        request_max_body_size=MAX_IMPORT_BYTES,
        guards=[managers_and_admins],  # on the handler, so CORS/OPTIONS stays unauthenticated
    )
    async def import_leads(self, db: Db, actor: CurrentActor, request: Request) -> ImportReport:  # type: ignore[type-arg]
        """Newline-delimited JSON, one lead per line with its `history` of stage
        changes (`to_stage`, `status`, `at`, `amount`), owner by id or e-mail and
        account by id or name. Rejected lines are reported by line number and
        field; the accepted ones are written together."""
        rows, rejected = parse_ndjson(await request.body())
        if len(rows) + len(rejected) > MAX_IMPORT_ROWS:
            rejected.append(
                RejectedRow(
                    row=0, external_ref=None, field="body", message=f"at most {MAX_IMPORT_ROWS} lines per import"
                )
            )
            return ImportReport(accepted=0, stage_changes=0, rejected=rejected)
        report = await import_leads(db, actor, [row for _, row in rows])
        # The service numbers the rows it saw; map back to the lines they came from.
        line_of = [number for number, _ in rows]
        for r in report.rejected:
            r.row = line_of[r.row - 1]
        return ImportReport(
            accepted=report.accepted,
            stage_changes=report.stage_changes,
            rejected=sorted(rejected + report.rejected, key=lambda r: r.row),
        )
