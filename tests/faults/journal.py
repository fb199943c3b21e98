"""The oracle: a trigger journals every insert and update of a sequence row.

The trigger writes in the same transaction as the change, so the journal holds exactly
the changes that committed. For one sequence its ids follow commit order: the journal
row is inserted after the sequence row is locked, and the lock is held to the commit.
"""

from __future__ import annotations

from typing import Any

COLUMNS = (
    "seq_id, op, old_status, new_status, old_epoch, new_epoch, old_step, new_step, "
    "old_token, new_token, old_due, new_due, claimed_by"
)

SQLITE = [
    "DROP TRIGGER IF EXISTS testapp_journal_insert",
    "DROP TRIGGER IF EXISTS testapp_journal_update",
    f"""
    CREATE TRIGGER testapp_journal_insert AFTER INSERT ON sequence_record
    BEGIN
      INSERT INTO testapp_journal ({COLUMNS}) VALUES (
        NEW.id, 'I', NULL, NEW.status, NULL, NEW.epoch, NULL, NEW.step_index,
        NULL, NEW.claim_token, NULL, NEW.dispatch_due IS NOT NULL, NEW.claimed_by);
    END
    """,
    f"""
    CREATE TRIGGER testapp_journal_update AFTER UPDATE ON sequence_record
    BEGIN
      INSERT INTO testapp_journal ({COLUMNS}) VALUES (
        NEW.id, 'U', OLD.status, NEW.status, OLD.epoch, NEW.epoch, OLD.step_index,
        NEW.step_index, OLD.claim_token, NEW.claim_token, OLD.dispatch_due IS NOT NULL,
        NEW.dispatch_due IS NOT NULL, NEW.claimed_by);
    END
    """,
]

POSTGRESQL = [
    f"""
    CREATE OR REPLACE FUNCTION testapp_journal_row() RETURNS trigger AS $$
    BEGIN
      IF TG_OP = 'INSERT' THEN
        INSERT INTO testapp_journal ({COLUMNS}) VALUES (
          NEW.id, 'I', NULL, NEW.status, NULL, NEW.epoch, NULL, NEW.step_index,
          NULL, NEW.claim_token, NULL, NEW.dispatch_due IS NOT NULL, NEW.claimed_by);
      ELSE
        INSERT INTO testapp_journal ({COLUMNS}) VALUES (
          NEW.id, 'U', OLD.status, NEW.status, OLD.epoch, NEW.epoch, OLD.step_index,
          NEW.step_index, OLD.claim_token, NEW.claim_token, OLD.dispatch_due IS NOT NULL,
          NEW.dispatch_due IS NOT NULL, NEW.claimed_by);
      END IF;
      RETURN NULL;
    END
    $$ LANGUAGE plpgsql
    """,
    "DROP TRIGGER IF EXISTS testapp_journal_row ON sequence_record",
    """
    CREATE TRIGGER testapp_journal_row AFTER INSERT OR UPDATE ON sequence_record
    FOR EACH ROW EXECUTE FUNCTION testapp_journal_row()
    """,
]


def install(connection: Any) -> None:
    """Create the journal triggers (idempotent)."""
    statements = POSTGRESQL if connection.vendor == "postgresql" else SQLITE
    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
