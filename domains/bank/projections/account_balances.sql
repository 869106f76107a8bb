-- Account balances: one row per account with its balance, status and how
-- many deposits and withdrawals it took. Asynchronous (read.db): read it
-- with min_position (the position a command answered) to see your own
-- writes; the inline available_balances read model needs no wait.
--
-- Idempotent: the insert happens once and every update touches a row only
-- when the event is newer than it (version < :version).
--
-- @projection account_balances
-- @version 1
-- @mode async

CREATE TABLE IF NOT EXISTS account_balances (
    account_id    TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    currency      TEXT NOT NULL,
    balance_cents BIGINT NOT NULL,
    status        TEXT NOT NULL,
    deposits      BIGINT NOT NULL,
    withdrawals   BIGINT NOT NULL,
    opened_at     TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    version       BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS account_balances_by_owner
    ON account_balances (owner, account_id);

-- @on AccountOpened
INSERT INTO account_balances (account_id, owner, currency, balance_cents,
    status, deposits, withdrawals, opened_at, updated_at, version)
VALUES (:data.account_id, :data.owner, :data.currency, 0, 'open', 0, 0,
    :time, :time, :version)
ON CONFLICT (account_id) DO NOTHING;

-- @on MoneyDeposited
UPDATE account_balances
   SET balance_cents = :data.balance_cents, deposits = deposits + 1,
       updated_at = :time, version = :version
 WHERE account_id = :data.account_id AND version < :version;

-- @on MoneyWithdrawn
UPDATE account_balances
   SET balance_cents = :data.balance_cents, withdrawals = withdrawals + 1,
       updated_at = :time, version = :version
 WHERE account_id = :data.account_id AND version < :version;

-- @on AccountClosed
UPDATE account_balances
   SET status = 'closed', updated_at = :time, version = :version
 WHERE account_id = :data.account_id AND version < :version;

-- @query account_balance
-- @param account_id id required
-- @stream account-{account_id}
-- @result one
SELECT account_id, owner, currency, balance_cents, status, deposits,
       withdrawals, opened_at, updated_at, version
  FROM account_balances
 WHERE account_id = :account_id;

-- @query owner_accounts
-- @param owner text 1..100 required
-- @result list
SELECT account_id, currency, balance_cents, status
  FROM account_balances
 WHERE owner = :owner
 ORDER BY account_id;
