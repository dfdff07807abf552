-- crm-erp-sync: the sync store's role (crm-erp-sync roles store). Run as the database owner, once;
-- then set its password (\password crm_erp_sync_store). The sync creates its tables in schema sync,
-- and `crm-erp-sync registry` (when it is the schema registry) its own in schema registry.
BEGIN;
DO $$ BEGIN CREATE ROLE crm_erp_sync_store LOGIN; EXCEPTION WHEN duplicate_object THEN ALTER ROLE crm_erp_sync_store LOGIN; END $$;
CREATE SCHEMA IF NOT EXISTS sync AUTHORIZATION crm_erp_sync_store;
CREATE SCHEMA IF NOT EXISTS registry AUTHORIZATION crm_erp_sync_store;
COMMIT;
