-- Demo data behind the agent templates (agents/templates/, docs/templates.md): a small shop,
-- a SaaS billing system and a bank, each with a handful of fixed rows so every database has the
-- same demo. The demo tools (tools/demo/) read and change these tables; `SELECT demo_reset()`
-- puts the seed rows back.

-- E-commerce. Money is in integer cents; an order's total is its items less its discount.
CREATE TABLE demo_orders (
  id                 text PRIMARY KEY,            -- an order number, e.g. '1001'
  customer           text NOT NULL,
  status             text NOT NULL CHECK (status IN ('pending', 'paid', 'shipped', 'delivered', 'cancelled')),
  items              jsonb NOT NULL,              -- [{sku, name, quantity, unitPriceCents}]
  shipping_address   text NOT NULL,
  tracking_number    text,
  carrier            text,
  estimated_delivery date,
  delivered_on       date,
  cancel_reason      text,
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now()
);

-- At most one discount per order.
CREATE TABLE demo_discounts (
  order_id      text PRIMARY KEY REFERENCES demo_orders (id),
  percent       integer NOT NULL CHECK (percent BETWEEN 1 AND 100),
  session_id    text,
  created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE demo_coupons (
  code          text PRIMARY KEY,                 -- generated: SAVE<percent>-<8 uppercase hex digits>
  percent       integer NOT NULL CHECK (percent BETWEEN 1 AND 100),
  session_id    text,
  created_at    timestamptz NOT NULL DEFAULT now()
);

-- SaaS billing.
CREATE TABLE demo_plans (
  id                    text PRIMARY KEY,
  price_per_seat_cents  integer NOT NULL,
  max_seats             integer NOT NULL
);

CREATE TABLE demo_subscriptions (
  account_id    text PRIMARY KEY,                 -- e.g. 'acme'
  company       text NOT NULL,
  plan          text NOT NULL REFERENCES demo_plans (id),
  seats         integer NOT NULL CHECK (seats > 0),
  status        text NOT NULL CHECK (status IN ('trialing', 'active', 'past_due', 'cancelled')),
  renews_on     date,
  updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Banking. A debit is a negative amount.
CREATE TABLE demo_bank_accounts (
  id             text PRIMARY KEY,                -- e.g. 'ACC-100'
  holder         text NOT NULL,
  balance_cents  bigint NOT NULL,
  currency       text NOT NULL
);

CREATE TABLE demo_cards (
  last4          text PRIMARY KEY,
  account_id     text NOT NULL REFERENCES demo_bank_accounts (id),
  status         text NOT NULL CHECK (status IN ('active', 'frozen')),
  frozen_reason  text,
  updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE demo_transactions (
  id              text PRIMARY KEY,               -- e.g. 'TX-5001'
  account_id      text NOT NULL REFERENCES demo_bank_accounts (id),
  posted_on       date NOT NULL,
  merchant        text NOT NULL,
  amount_cents    bigint NOT NULL,
  status          text NOT NULL CHECK (status IN ('posted', 'disputed')),
  dispute_reason  text
);
CREATE INDEX demo_transactions_account ON demo_transactions (account_id, posted_on DESC, id DESC);

-- Every change a demo write tool made, by the call's idempotency key: a retried call finds its
-- row and answers the stored result instead of changing anything twice.
CREATE TABLE demo_actions (
  idempotency_key  text PRIMARY KEY,
  tool             text NOT NULL,
  session_id       text,
  result           jsonb,
  created_at       timestamptz NOT NULL DEFAULT now()
);

-- Empties the demo tables and writes the seed rows again.
CREATE FUNCTION demo_reset() RETURNS void LANGUAGE sql AS $$
  TRUNCATE demo_actions, demo_discounts, demo_coupons, demo_orders,
           demo_subscriptions, demo_plans, demo_transactions, demo_cards, demo_bank_accounts;

  INSERT INTO demo_orders (id, customer, status, items, shipping_address, tracking_number, carrier, estimated_delivery, delivered_on, cancel_reason) VALUES
    ('1001', 'Alice Martin', 'paid',
     '[{"sku": "MUG-01", "name": "Ceramic mug", "quantity": 2, "unitPriceCents": 1250}, {"sku": "TEA-10", "name": "Green tea, 100 g", "quantity": 1, "unitPriceCents": 890}]',
     '12 Rue des Lilas, 69003 Lyon, France', '1Z999AA10123456784', 'UPS', '2025-06-14', NULL, NULL),
    ('1002', 'Bob Chen', 'shipped',
     '[{"sku": "LAMP-02", "name": "Desk lamp", "quantity": 1, "unitPriceCents": 4599}]',
     '88 Harbour Street, Sydney NSW 2000, Australia', '9400111899223857263511', 'USPS', '2025-06-12', NULL, NULL),
    ('1003', 'Carla Rossi', 'delivered',
     '[{"sku": "BOOK-07", "name": "The Pragmatic Gardener", "quantity": 1, "unitPriceCents": 2400}, {"sku": "MUG-01", "name": "Ceramic mug", "quantity": 1, "unitPriceCents": 1250}]',
     'Via Roma 5, 00184 Roma, Italy', 'JD014600006281234567', 'DHL', '2025-06-03', '2025-06-02', NULL),
    ('1004', 'Dan Okafor', 'pending',
     '[{"sku": "CHAIR-05", "name": "Oak chair", "quantity": 4, "unitPriceCents": 8900}]',
     '4 Marina Road, Lagos, Nigeria', NULL, NULL, NULL, NULL, NULL),
    ('1005', 'Eve Novak', 'cancelled',
     '[{"sku": "TEA-10", "name": "Green tea, 100 g", "quantity": 3, "unitPriceCents": 890}]',
     'Dlouha 12, 110 00 Praha, Czechia', NULL, NULL, NULL, NULL, 'ordered twice by mistake'),
    ('1006', 'Farid Haddad', 'paid',
     '[{"sku": "KETTLE-03", "name": "Electric kettle", "quantity": 1, "unitPriceCents": 3999}]',
     '21 Rue Hamra, Beirut, Lebanon', NULL, NULL, NULL, NULL, NULL);
  INSERT INTO demo_discounts (order_id, percent) VALUES ('1003', 5);
  INSERT INTO demo_coupons (code, percent) VALUES ('WELCOME10', 10);

  INSERT INTO demo_plans (id, price_per_seat_cents, max_seats) VALUES
    ('free', 0, 3), ('starter', 900, 10), ('pro', 2900, 100), ('enterprise', 4900, 10000);
  INSERT INTO demo_subscriptions (account_id, company, plan, seats, status, renews_on) VALUES
    ('acme', 'Acme Corp', 'pro', 25, 'active', '2025-07-01'),
    ('globex', 'Globex', 'starter', 5, 'trialing', '2025-06-20'),
    ('initech', 'Initech', 'free', 1, 'active', NULL),
    ('umbrella', 'Umbrella Health', 'enterprise', 200, 'past_due', '2025-06-01'),
    ('hooli', 'Hooli', 'pro', 10, 'cancelled', NULL);

  INSERT INTO demo_bank_accounts (id, holder, balance_cents, currency) VALUES
    ('ACC-100', 'Alice Martin', 245075, 'EUR'),
    ('ACC-200', 'Bob Chen', 12000, 'EUR');
  INSERT INTO demo_cards (last4, account_id, status, frozen_reason) VALUES
    ('4242', 'ACC-100', 'active', NULL),
    ('1881', 'ACC-200', 'frozen', 'reported lost');
  INSERT INTO demo_transactions (id, account_id, posted_on, merchant, amount_cents, status, dispute_reason) VALUES
    ('TX-5001', 'ACC-100', '2025-06-01', 'Salary ACME Corp', 320000, 'posted', NULL),
    ('TX-5002', 'ACC-100', '2025-06-02', 'Coffee Corner', -450, 'posted', NULL),
    ('TX-5003', 'ACC-100', '2025-06-03', 'Online Electronics', -89999, 'posted', NULL),
    ('TX-5004', 'ACC-100', '2025-06-04', 'Grocery Mart', -7620, 'posted', NULL),
    ('TX-5005', 'ACC-100', '2025-06-05', 'Streaming Plus', -1599, 'disputed', 'charged after the subscription ended'),
    ('TX-6001', 'ACC-200', '2025-06-02', 'City Transit', -250, 'posted', NULL),
    ('TX-6002', 'ACC-200', '2025-06-03', 'Book Nook', -1850, 'posted', NULL);
$$;

SELECT demo_reset();
