-- Demo ERP (Kingdee/Odoo style). Business keys from sequences, money in fen (bigint),
-- modified_on is Asia/Shanghai local time WITHOUT time zone, as many ERPs keep it.
CREATE SCHEMA IF NOT EXISTS sync_meta;
CREATE TABLE IF NOT EXISTS sync_meta.seeded (id int PRIMARY KEY, seeded_at timestamptz NOT NULL DEFAULT now());

CREATE OR REPLACE FUNCTION touch_modified_on() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.modified_on := (now() AT TIME ZONE 'Asia/Shanghai');
  RETURN NEW;
END $$;

CREATE SEQUENCE customer_no_seq START 100001;
CREATE SEQUENCE sales_order_no_seq START 1;
CREATE SEQUENCE shipment_no_seq START 1;
CREATE SEQUENCE invoice_no_seq START 1;
CREATE SEQUENCE payment_no_seq START 1;
CREATE SEQUENCE return_no_seq START 1;

CREATE TABLE customers (
  cust_no          varchar(10) PRIMARY KEY DEFAULT ('C' || lpad(nextval('customer_no_seq')::text, 6, '0')),
  full_name        text NOT NULL,
  tax_no           varchar(20),
  contact_phone    text,
  email            text,
  address          text,
  credit_limit_fen bigint NOT NULL DEFAULT 0,
  payment_terms    text NOT NULL DEFAULT 'NET30' CHECK (payment_terms IN ('NET30', 'NET60', 'COD')),
  blocked          boolean NOT NULL DEFAULT false,
  created_on       timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'Asia/Shanghai'),
  modified_on      timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'Asia/Shanghai')
);

CREATE TABLE items (
  sku         varchar(20) PRIMARY KEY,
  description text NOT NULL,
  uom         text NOT NULL DEFAULT 'PCS',
  price_fen   bigint NOT NULL,
  on_hand     numeric(12,3) NOT NULL DEFAULT 0,
  reserved    numeric(12,3) NOT NULL DEFAULT 0,
  modified_on timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'Asia/Shanghai')
);

CREATE TABLE sales_orders (
  order_no    varchar(14) PRIMARY KEY
                DEFAULT ('SO' || to_char(now(), 'YYYY') || lpad(nextval('sales_order_no_seq')::text, 6, '0')),
  cust_no     varchar(10) NOT NULL REFERENCES customers(cust_no),
  status      smallint NOT NULL DEFAULT 10 CHECK (status IN (10, 15, 20, 30, 40, 50, 60, 90)),
  order_date  date NOT NULL DEFAULT current_date,
  total_fen   bigint NOT NULL DEFAULT 0,
  currency    char(3) NOT NULL DEFAULT 'CNY',
  modified_on timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'Asia/Shanghai')
);

CREATE TABLE sales_order_lines (
  order_no  varchar(14) NOT NULL REFERENCES sales_orders(order_no),
  line_no   int NOT NULL,
  sku       varchar(20) NOT NULL REFERENCES items(sku),
  qty       numeric(12,3) NOT NULL,
  price_fen bigint NOT NULL,
  PRIMARY KEY (order_no, line_no)
);

CREATE TABLE shipments (
  shipment_no varchar(14) PRIMARY KEY DEFAULT ('SH' || lpad(nextval('shipment_no_seq')::text, 8, '0')),
  order_no    varchar(14) NOT NULL REFERENCES sales_orders(order_no),
  shipped_on  date NOT NULL,
  carrier     text,
  tracking_no text
);

CREATE TABLE invoices (
  invoice_no varchar(14) PRIMARY KEY DEFAULT ('INV' || lpad(nextval('invoice_no_seq')::text, 8, '0')),
  order_no   varchar(14) NOT NULL REFERENCES sales_orders(order_no),
  amount_fen bigint NOT NULL,
  issued_on  date NOT NULL,
  due_on     date NOT NULL,
  status     text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'paid', 'void'))
);

CREATE TABLE payments (
  payment_no  varchar(14) PRIMARY KEY DEFAULT ('PAY' || lpad(nextval('payment_no_seq')::text, 8, '0')),
  invoice_no  varchar(14) NOT NULL REFERENCES invoices(invoice_no),
  amount_fen  bigint NOT NULL,
  received_on timestamp NOT NULL
);

CREATE TABLE return_orders (
  return_no  varchar(14) PRIMARY KEY DEFAULT ('RT' || lpad(nextval('return_no_seq')::text, 8, '0')),
  order_no   varchar(14) NOT NULL REFERENCES sales_orders(order_no),
  reason     text,
  status     text NOT NULL DEFAULT 'requested' CHECK (status IN ('requested', 'received', 'refunded')),
  created_on timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'Asia/Shanghai')
);

CREATE TRIGGER customers_touch BEFORE UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION touch_modified_on();
CREATE TRIGGER items_touch BEFORE UPDATE ON items FOR EACH ROW EXECUTE FUNCTION touch_modified_on();
CREATE TRIGGER sales_orders_touch BEFORE UPDATE ON sales_orders FOR EACH ROW EXECUTE FUNCTION touch_modified_on();

ALTER TABLE customers REPLICA IDENTITY FULL;
ALTER TABLE items REPLICA IDENTITY FULL;
ALTER TABLE sales_orders REPLICA IDENTITY FULL;
ALTER TABLE sales_order_lines REPLICA IDENTITY FULL;
ALTER TABLE shipments REPLICA IDENTITY FULL;
ALTER TABLE invoices REPLICA IDENTITY FULL;
ALTER TABLE payments REPLICA IDENTITY FULL;
ALTER TABLE return_orders REPLICA IDENTITY FULL;

