-- Demo CRM (Salesforce/Twenty style). Keys are UUIDs, money in yuan, times with time zone.
CREATE SCHEMA IF NOT EXISTS sync_meta;
CREATE TABLE IF NOT EXISTS sync_meta.seeded (id int PRIMARY KEY, seeded_at timestamptz NOT NULL DEFAULT now());

CREATE OR REPLACE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END $$;

CREATE TABLE accounts (
  id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name            text NOT NULL,
  legal_name      text,
  uscc            char(18),
  industry        text,
  tier            text NOT NULL DEFAULT 'C' CHECK (tier IN ('A', 'B', 'C')),
  phone           text,
  email           text,
  address         text,
  owner           text,
  credit_limit    numeric(14,2),
  ar_balance      numeric(14,2) NOT NULL DEFAULT 0,
  last_payment_at timestamptz,
  status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive')),
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE contacts (
  id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  account_id uuid NOT NULL REFERENCES accounts(id),
  name       text NOT NULL,
  phone      text,
  email      text,
  title      text,
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE products (
  code          text PRIMARY KEY,
  name          text NOT NULL,
  list_price    numeric(14,2) NOT NULL,
  available_qty numeric(12,3) NOT NULL DEFAULT 0,
  updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE opportunities (
  id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  account_id         uuid NOT NULL REFERENCES accounts(id),
  title              text NOT NULL,
  stage              text NOT NULL DEFAULT 'prospecting' CHECK (stage IN
                       ('prospecting', 'qualification', 'proposal', 'negotiation', 'closed_won', 'closed_lost')),
  amount             numeric(14,2),
  currency           char(3) NOT NULL DEFAULT 'CNY',
  expected_close     date,
  erp_order_no       text,
  fulfillment_status text CHECK (fulfillment_status IN
                       ('credit_hold', 'ordered', 'in_production', 'shipped', 'invoiced', 'paid', 'cancelled')),
  updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE opportunity_lines (
  id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  opportunity_id uuid NOT NULL REFERENCES opportunities(id),
  product_code   text NOT NULL,
  quantity       numeric(12,3) NOT NULL,
  unit_price     numeric(14,2) NOT NULL
);

CREATE TABLE cases (
  id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  account_id     uuid NOT NULL REFERENCES accounts(id),
  opportunity_id uuid REFERENCES opportunities(id),
  kind           text NOT NULL CHECK (kind IN ('question', 'complaint', 'return')),
  subject        text NOT NULL,
  status         text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'pending', 'closed')),
  erp_return_no  text,
  updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER accounts_touch BEFORE UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER contacts_touch BEFORE UPDATE ON contacts FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER products_touch BEFORE UPDATE ON products FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER opportunities_touch BEFORE UPDATE ON opportunities FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER cases_touch BEFORE UPDATE ON cases FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- Full before-images on update/delete, and no TOAST placeholders in change events.
ALTER TABLE accounts REPLICA IDENTITY FULL;
ALTER TABLE contacts REPLICA IDENTITY FULL;
ALTER TABLE products REPLICA IDENTITY FULL;
ALTER TABLE opportunities REPLICA IDENTITY FULL;
ALTER TABLE opportunity_lines REPLICA IDENTITY FULL;
ALTER TABLE cases REPLICA IDENTITY FULL;

