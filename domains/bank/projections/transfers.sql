-- Transfers: a transfer is two commands correlated by its transfer_id, a
-- Withdraw on the paying account (to_account = the other) and a Deposit
-- on the receiving one (from_account = the first). This read model joins
-- the two legs by that id, whichever arrives first:
--
--   | status    | legs seen                                        |
--   |-----------|--------------------------------------------------|
--   | withdrawn | the withdrawal only: money is on its way         |
--   | deposited | the deposit only                                 |
--   | completed | both, the deposit on the other account           |
--   | returned  | both, the deposit back on the paying account     |
--
-- Events without a transfer_id are plain deposits and withdrawals: the
-- statements insert nothing for them (WHERE ... IS NOT NULL).
--
-- @projection transfers
-- @version 1
-- @mode async

CREATE TABLE IF NOT EXISTS transfers (
    transfer_id   TEXT PRIMARY KEY,
    from_account  TEXT,
    to_account    TEXT,
    amount_cents  BIGINT NOT NULL,
    status        TEXT NOT NULL,
    withdrawn_at  TEXT,
    deposited_at  TEXT,
    last_position BIGINT NOT NULL
);

-- @on MoneyWithdrawn
INSERT INTO transfers (transfer_id, from_account, to_account, amount_cents,
    status, withdrawn_at, deposited_at, last_position)
SELECT :data.transfer_id, :data.account_id, :data.counterparty,
       :data.amount_cents, 'withdrawn', :time, NULL, :position
 WHERE CAST(:data.transfer_id AS TEXT) IS NOT NULL
ON CONFLICT (transfer_id) DO UPDATE
   SET from_account = excluded.from_account, withdrawn_at = excluded.withdrawn_at,
       status = CASE WHEN transfers.to_account = excluded.from_account
                     THEN 'returned' ELSE 'completed' END,
       last_position = excluded.last_position
 WHERE transfers.last_position < excluded.last_position
   AND transfers.withdrawn_at IS NULL;

-- @on MoneyDeposited
INSERT INTO transfers (transfer_id, from_account, to_account, amount_cents,
    status, withdrawn_at, deposited_at, last_position)
SELECT :data.transfer_id, :data.counterparty, :data.account_id,
       :data.amount_cents, 'deposited', NULL, :time, :position
 WHERE CAST(:data.transfer_id AS TEXT) IS NOT NULL
ON CONFLICT (transfer_id) DO UPDATE
   SET to_account = excluded.to_account, deposited_at = excluded.deposited_at,
       status = CASE WHEN transfers.from_account = excluded.to_account
                     THEN 'returned' ELSE 'completed' END,
       last_position = excluded.last_position
 WHERE transfers.last_position < excluded.last_position
   AND transfers.deposited_at IS NULL;

-- @query transfer
-- @param transfer_id id required
-- @result one
SELECT transfer_id, from_account, to_account, amount_cents, status,
       withdrawn_at, deposited_at
  FROM transfers
 WHERE transfer_id = :transfer_id;
