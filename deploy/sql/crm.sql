-- crm-erp-sync: least-privilege roles for the CRM database, rendered from the profiles
-- (crm-erp-sync roles crm). Run as the owner of the captured tables, once and after every
-- profile change; then set the passwords (\password ...). Nothing else needs DDL rights.
BEGIN;
DO $$ BEGIN CREATE ROLE crm_erp_sync_capture LOGIN REPLICATION; EXCEPTION WHEN duplicate_object THEN ALTER ROLE crm_erp_sync_capture LOGIN REPLICATION; END $$;
DO $$ BEGIN CREATE ROLE crm_erp_sync_apply LOGIN; EXCEPTION WHEN duplicate_object THEN ALTER ROLE crm_erp_sync_apply LOGIN; END $$;

-- The sync's bookkeeping: heartbeat and signals (capture), progress, created records, its
-- own transactions and the audit notes of its writes (appliers).
CREATE SCHEMA IF NOT EXISTS sync_meta;
CREATE TABLE IF NOT EXISTS sync_meta.heartbeat (id int PRIMARY KEY, beat_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS sync_meta.debezium_signal (
  id varchar(64) PRIMARY KEY, type varchar(32) NOT NULL, data varchar(2048));
CREATE SCHEMA IF NOT EXISTS sync_meta;
CREATE TABLE IF NOT EXISTS sync_meta.applier_progress (
  topic     text NOT NULL,
  partition int  NOT NULL,
  "offset"  bigint NOT NULL,
  PRIMARY KEY (topic, partition)
);
-- The topic's id when that offset was applied: a topic deleted and created again starts afresh.
ALTER TABLE sync_meta.applier_progress ADD COLUMN IF NOT EXISTS incarnation text NOT NULL DEFAULT '';
CREATE TABLE IF NOT EXISTS sync_meta.created (
  entity     text NOT NULL,
  global_id  text NOT NULL,
  key        text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (entity, global_id)
);
CREATE INDEX IF NOT EXISTS created_by_key ON sync_meta.created (entity, key);
-- The applier's transactions (32-bit ids, as change events carry them): their changes are the sync's echoes.
CREATE TABLE IF NOT EXISTS sync_meta.applied_tx (
  xid bigint      NOT NULL PRIMARY KEY,
  at  timestamptz NOT NULL DEFAULT now()
);
-- Each write's audit note, in the write's transaction, until the worker moved it to the sync store.
CREATE TABLE IF NOT EXISTS sync_meta.audit_outbox (
  id    bigserial PRIMARY KEY,
  entry jsonb NOT NULL
);

GRANT USAGE ON SCHEMA sync_meta, public TO crm_erp_sync_capture, crm_erp_sync_apply;
GRANT SELECT, INSERT, UPDATE ON sync_meta.heartbeat TO crm_erp_sync_capture;
GRANT SELECT, INSERT ON sync_meta.debezium_signal TO crm_erp_sync_capture;
GRANT SELECT, INSERT ON sync_meta.debezium_signal TO crm_erp_sync_apply;
GRANT SELECT, INSERT, UPDATE, DELETE ON sync_meta.applier_progress, sync_meta.created, sync_meta.applied_tx TO crm_erp_sync_apply;
GRANT SELECT, INSERT, UPDATE, DELETE ON sync_meta.audit_outbox TO crm_erp_sync_apply;
GRANT USAGE ON SEQUENCE sync_meta.audit_outbox_id_seq TO crm_erp_sync_apply;

-- Capture reads the captured tables, nothing else.
GRANT SELECT ON "public"."accounts", "public"."cases", "public"."opportunities", "public"."opportunity_lines", "public"."products" TO crm_erp_sync_capture;
DO $$ BEGIN CREATE PUBLICATION crm_erp_sync_crm; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
ALTER PUBLICATION crm_erp_sync_crm SET TABLE "public"."accounts", "public"."cases", "public"."opportunities", "public"."opportunity_lines", "public"."products", "sync_meta"."heartbeat", "sync_meta"."debezium_signal";

-- The appliers read what the sync reads and write only what the profiles map.
GRANT SELECT ON "public"."accounts", "public"."cases", "public"."opportunities", "public"."opportunity_lines", "public"."products" TO crm_erp_sync_apply;
GRANT UPDATE (address, ar_balance, credit_limit, email, last_payment_at, legal_name, phone, status, uscc) ON "public"."accounts" TO crm_erp_sync_apply;
GRANT UPDATE (erp_return_no, status) ON "public"."cases" TO crm_erp_sync_apply;
GRANT UPDATE (erp_order_no, fulfillment_status) ON "public"."opportunities" TO crm_erp_sync_apply;
GRANT UPDATE (available_qty, code, list_price) ON "public"."products" TO crm_erp_sync_apply;
GRANT INSERT ON "public"."accounts", "public"."products" TO crm_erp_sync_apply;
-- and the sequences their column defaults draw from
DO $$ DECLARE s regclass; BEGIN
  FOR s IN SELECT DISTINCT d.refobjid::regclass FROM pg_depend d
    JOIN pg_attrdef a ON a.oid = d.objid JOIN pg_class c ON c.oid = d.refobjid AND c.relkind = 'S'
    WHERE d.classid = 'pg_attrdef'::regclass AND d.refclassid = 'pg_class'::regclass
      AND a.adrelid = ANY (ARRAY['"public"."accounts"', '"public"."products"']::regclass[])
  LOOP EXECUTE format('GRANT USAGE ON SEQUENCE %s TO crm_erp_sync_apply', s); END LOOP;
END $$;
ALTER TABLE "public"."accounts" REPLICA IDENTITY FULL;
ALTER TABLE "public"."cases" REPLICA IDENTITY FULL;
ALTER TABLE "public"."opportunities" REPLICA IDENTITY FULL;
ALTER TABLE "public"."opportunity_lines" REPLICA IDENTITY FULL;
ALTER TABLE "public"."products" REPLICA IDENTITY FULL;
COMMIT;
