-- Available balances: what each account can spend right now, its balance
-- plus its overdraft limit (0 once closed). Inline: written in the same
-- transaction as the command's events (events.db), so it is exact the
-- moment Deposit or Withdraw is answered, without min_position.
--
-- Its handler is C code, apply() in bank.c (cqrs/projection.h), so this
-- file has no @on blocks; it lives in code/, not in projections/, which
-- holds the declared projections the module loads as such.
--
-- @projection available_balances
-- @version 1
-- @mode inline

CREATE TABLE IF NOT EXISTS available_balances (
    account_id            TEXT PRIMARY KEY,
    currency              TEXT NOT NULL,
    balance_cents         BIGINT NOT NULL,
    overdraft_limit_cents BIGINT NOT NULL,
    available_cents       BIGINT NOT NULL,
    status                TEXT NOT NULL,
    version               BIGINT NOT NULL
);

-- @query available_balance
-- @param account_id id required
-- @stream account-{account_id}
-- @result one
SELECT account_id, currency, balance_cents, overdraft_limit_cents,
       available_cents, status, version
  FROM available_balances
 WHERE account_id = :account_id;
