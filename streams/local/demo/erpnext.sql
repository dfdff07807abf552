-- Second demo ERP, modelled on ERPNext's doctypes as they appear on PostgreSQL (table and column
-- names from its public documentation; a subset of columns; synthetic data). What makes it differ
-- from the first demo ERP, on purpose:
--   * quoted table names with spaces ("tabSales Order"), varchar `name` keys from naming series
--     (CUST-2026-00001, SAL-ORD-2026-00001), child tables keyed by `parent` with `idx` order;
--   * amounts numeric(21,9) in currency units (yuan), not integer fen;
--   * the credit limit in a child row ("tabCustomer Credit Limit"), stock per warehouse in "tabBin"
--     (available = sum of actual - reserved);
--   * `modified` is local (Asia/Shanghai) time WITHOUT time zone, set by the application, never by a
--     trigger: a writer that does not stamp it leaves it stale;
--   * `docstatus` 0/1/2 (draft, submitted, cancelled) with a text `status`; `disabled` 0/1.
CREATE SCHEMA IF NOT EXISTS sync_meta;
CREATE TABLE IF NOT EXISTS sync_meta.seeded (id int PRIMARY KEY, seeded_at timestamptz NOT NULL DEFAULT now());

CREATE SEQUENCE customer_series START 1;
CREATE SEQUENCE sales_order_series START 1;
CREATE SEQUENCE delivery_note_series START 1;
CREATE SEQUENCE sales_invoice_series START 1;
CREATE SEQUENCE payment_entry_series START 1;

-- A child row's `name` is a random hash in ERPNext.
CREATE OR REPLACE FUNCTION child_name() RETURNS varchar LANGUAGE sql AS $$ SELECT substr(md5(random()::text), 1, 10) $$;
CREATE OR REPLACE FUNCTION local_now() RETURNS timestamp LANGUAGE sql AS $$ SELECT now() AT TIME ZONE 'Asia/Shanghai' $$;

CREATE TABLE "tabCustomer" (
  name            varchar(140) PRIMARY KEY
                    DEFAULT ('CUST-' || to_char(now(), 'YYYY') || '-' || lpad(nextval('customer_series')::text, 5, '0')),
  creation        timestamp(6) NOT NULL DEFAULT local_now(),
  modified        timestamp(6) NOT NULL DEFAULT local_now(),
  modified_by     varchar(140) NOT NULL DEFAULT 'Administrator',
  owner           varchar(140) NOT NULL DEFAULT 'Administrator',
  docstatus       smallint NOT NULL DEFAULT 0,
  idx             int NOT NULL DEFAULT 0,
  customer_name   varchar(140) NOT NULL,
  customer_type   varchar(140) NOT NULL DEFAULT 'Company',
  customer_group  varchar(140) NOT NULL DEFAULT 'Commercial',
  territory       varchar(140) NOT NULL DEFAULT 'China',
  tax_id          varchar(140),
  mobile_no       varchar(140),
  email_id        varchar(140),
  primary_address text,
  payment_terms   varchar(140) CHECK (payment_terms IN ('NET30', 'NET60', 'COD')),
  disabled        smallint NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1))
);

CREATE TABLE "tabCustomer Credit Limit" (
  name                      varchar(140) PRIMARY KEY DEFAULT child_name(),
  parent                    varchar(140) NOT NULL REFERENCES "tabCustomer"(name),
  parentfield               varchar(140) NOT NULL DEFAULT 'credit_limits',
  parenttype                varchar(140) NOT NULL DEFAULT 'Customer',
  idx                       int NOT NULL DEFAULT 1,
  company                   varchar(140) NOT NULL DEFAULT 'Demo Trading Co.',
  credit_limit              numeric(21,9) NOT NULL DEFAULT 0,
  bypass_credit_limit_check smallint NOT NULL DEFAULT 0,
  modified                  timestamp(6) NOT NULL DEFAULT local_now()
);

CREATE TABLE "tabItem" (
  name          varchar(140) PRIMARY KEY,
  item_code     varchar(140) NOT NULL UNIQUE,
  item_name     varchar(140) NOT NULL,
  description   text,
  stock_uom     varchar(140) NOT NULL DEFAULT 'Nos',
  standard_rate numeric NOT NULL DEFAULT 0,  -- plain numeric, as some ERPs keep prices: a variable-scale decimal
  disabled      smallint NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
  modified      timestamp(6) NOT NULL DEFAULT local_now(),
  modified_by   varchar(140) NOT NULL DEFAULT 'Administrator'
);

CREATE TABLE "tabBin" (
  name         varchar(140) PRIMARY KEY DEFAULT child_name(),
  item_code    varchar(140) NOT NULL REFERENCES "tabItem"(name),
  warehouse    varchar(140) NOT NULL,
  actual_qty   numeric(21,9) NOT NULL DEFAULT 0,
  reserved_qty numeric(21,9) NOT NULL DEFAULT 0,
  modified     timestamp(6) NOT NULL DEFAULT local_now(),
  UNIQUE (item_code, warehouse)
);

CREATE TABLE "tabSales Order" (
  name             varchar(140) PRIMARY KEY DEFAULT
                     ('SAL-ORD-' || to_char(now(), 'YYYY') || '-' || lpad(nextval('sales_order_series')::text, 5, '0')),
  creation         timestamp(6) NOT NULL DEFAULT local_now(),
  modified         timestamp(6) NOT NULL DEFAULT local_now(),
  modified_by      varchar(140) NOT NULL DEFAULT 'Administrator',
  docstatus        smallint NOT NULL DEFAULT 0 CHECK (docstatus IN (0, 1, 2)),
  customer         varchar(140) NOT NULL REFERENCES "tabCustomer"(name),
  transaction_date date NOT NULL DEFAULT current_date,
  currency         varchar(140) NOT NULL DEFAULT 'CNY',
  grand_total      numeric(21,9) NOT NULL DEFAULT 0,
  status           varchar(140) NOT NULL DEFAULT 'Draft' CHECK (status IN ('Draft', 'On Hold', 'To Deliver and Bill',
                     'To Bill', 'To Deliver', 'Completed', 'Cancelled', 'Closed')),
  per_delivered    numeric(21,9) NOT NULL DEFAULT 0,
  per_billed       numeric(21,9) NOT NULL DEFAULT 0
);

CREATE TABLE "tabSales Order Item" (
  name        varchar(140) PRIMARY KEY DEFAULT child_name(),
  parent      varchar(140) NOT NULL REFERENCES "tabSales Order"(name),
  parentfield varchar(140) NOT NULL DEFAULT 'items',
  parenttype  varchar(140) NOT NULL DEFAULT 'Sales Order',
  idx         int NOT NULL,
  item_code   varchar(140) NOT NULL REFERENCES "tabItem"(name),
  qty         numeric(21,9) NOT NULL,
  rate        numeric(21,9) NOT NULL,
  amount      numeric(21,9) GENERATED ALWAYS AS (round(qty * rate, 2)) STORED
);

-- A delivery, or (is_return = 1, negative quantities) goods coming back: a draft until received.
CREATE TABLE "tabDelivery Note" (
  name             varchar(140) PRIMARY KEY DEFAULT
                     ('MAT-DN-' || to_char(now(), 'YYYY') || '-' || lpad(nextval('delivery_note_series')::text, 5, '0')),
  creation         timestamp(6) NOT NULL DEFAULT local_now(),
  modified         timestamp(6) NOT NULL DEFAULT local_now(),
  modified_by      varchar(140) NOT NULL DEFAULT 'Administrator',
  docstatus        smallint NOT NULL DEFAULT 1 CHECK (docstatus IN (0, 1, 2)),
  customer         varchar(140) NOT NULL REFERENCES "tabCustomer"(name),
  posting_date     date NOT NULL DEFAULT current_date,
  transporter_name varchar(140),
  lr_no            varchar(140),
  is_return        smallint NOT NULL DEFAULT 0 CHECK (is_return IN (0, 1)),
  remarks          text,
  status           varchar(140) NOT NULL DEFAULT 'Completed'
);

CREATE TABLE "tabDelivery Note Item" (
  name                varchar(140) PRIMARY KEY DEFAULT child_name(),
  parent              varchar(140) NOT NULL REFERENCES "tabDelivery Note"(name),
  parentfield         varchar(140) NOT NULL DEFAULT 'items',
  parenttype          varchar(140) NOT NULL DEFAULT 'Delivery Note',
  idx                 int NOT NULL DEFAULT 1,
  item_code           varchar(140) NOT NULL REFERENCES "tabItem"(name),
  qty                 numeric(21,9) NOT NULL,
  against_sales_order varchar(140) REFERENCES "tabSales Order"(name)
);

CREATE TABLE "tabSales Invoice" (
  name               varchar(140) PRIMARY KEY DEFAULT
                       ('ACC-SINV-' || to_char(now(), 'YYYY') || '-' || lpad(nextval('sales_invoice_series')::text, 5, '0')),
  modified           timestamp(6) NOT NULL DEFAULT local_now(),
  docstatus          smallint NOT NULL DEFAULT 1 CHECK (docstatus IN (0, 1, 2)),
  customer           varchar(140) NOT NULL REFERENCES "tabCustomer"(name),
  posting_date       date NOT NULL DEFAULT current_date,
  due_date           date NOT NULL DEFAULT current_date + 30,
  grand_total        numeric(21,9) NOT NULL,
  outstanding_amount numeric(21,9) NOT NULL,
  status             varchar(140) NOT NULL DEFAULT 'Unpaid' CHECK (status IN ('Draft', 'Unpaid', 'Partly Paid', 'Paid',
                       'Overdue', 'Cancelled'))
);

CREATE TABLE "tabSales Invoice Item" (
  name        varchar(140) PRIMARY KEY DEFAULT child_name(),
  parent      varchar(140) NOT NULL REFERENCES "tabSales Invoice"(name),
  idx         int NOT NULL DEFAULT 1,
  item_code   varchar(140) REFERENCES "tabItem"(name),
  qty         numeric(21,9) NOT NULL DEFAULT 1,
  amount      numeric(21,9) NOT NULL,
  sales_order varchar(140) REFERENCES "tabSales Order"(name)
);

CREATE TABLE "tabPayment Entry" (
  name         varchar(140) PRIMARY KEY DEFAULT
                 ('ACC-PAY-' || to_char(now(), 'YYYY') || '-' || lpad(nextval('payment_entry_series')::text, 5, '0')),
  creation     timestamp(6) NOT NULL DEFAULT local_now(),
  modified     timestamp(6) NOT NULL DEFAULT local_now(),
  docstatus    smallint NOT NULL DEFAULT 1 CHECK (docstatus IN (0, 1, 2)),
  payment_type varchar(140) NOT NULL DEFAULT 'Receive',
  party_type   varchar(140) NOT NULL DEFAULT 'Customer',
  party        varchar(140) NOT NULL REFERENCES "tabCustomer"(name),
  paid_amount  numeric(21,9) NOT NULL,
  posting_date date NOT NULL DEFAULT current_date
);

CREATE TABLE "tabPayment Entry Reference" (
  name              varchar(140) PRIMARY KEY DEFAULT child_name(),
  parent            varchar(140) NOT NULL REFERENCES "tabPayment Entry"(name),
  idx               int NOT NULL DEFAULT 1,
  reference_doctype varchar(140) NOT NULL DEFAULT 'Sales Invoice',
  reference_name    varchar(140) NOT NULL REFERENCES "tabSales Invoice"(name),
  allocated_amount  numeric(21,9) NOT NULL
);

-- Every captured table sends whole rows (a child row's delete must still name its parent).
ALTER TABLE "tabCustomer" REPLICA IDENTITY FULL;
ALTER TABLE "tabCustomer Credit Limit" REPLICA IDENTITY FULL;
ALTER TABLE "tabItem" REPLICA IDENTITY FULL;
ALTER TABLE "tabBin" REPLICA IDENTITY FULL;
ALTER TABLE "tabSales Order" REPLICA IDENTITY FULL;
ALTER TABLE "tabSales Order Item" REPLICA IDENTITY FULL;
ALTER TABLE "tabDelivery Note" REPLICA IDENTITY FULL;
ALTER TABLE "tabDelivery Note Item" REPLICA IDENTITY FULL;
ALTER TABLE "tabSales Invoice" REPLICA IDENTITY FULL;
ALTER TABLE "tabSales Invoice Item" REPLICA IDENTITY FULL;
ALTER TABLE "tabPayment Entry" REPLICA IDENTITY FULL;
ALTER TABLE "tabPayment Entry Reference" REPLICA IDENTITY FULL;
