/*
 * bank.h -- the bank example domain, for its unit test (test_bank.c). The
 * server does not use this header: it loads bank.so and calls
 * cq_module_init() (cqrs/module.h). Written, like all of domains/bank/,
 * against the installed headers only (<cqrs/...>), and built both by
 * cqrsd's CMake and, outside the tree, by its own Makefile with
 * pkg-config.
 */
#ifndef BANK_BANK_H
#define BANK_BANK_H

#include <cqrs/decider.h>

/* The domain: OpenAccount, Deposit, Withdraw, CloseAccount on the
 * aggregate "account", stream "account-{account_id}" (README.md has the
 * rules). Static, immutable; never NULL. Thread-safe. */
const cq_domain *bank_domain(void);

/* Largest amount of one deposit or withdrawal, and of an overdraft limit,
 * in cents. Balances stay within +-2 * 10^15 by the same rules. */
#define BANK_MAX_AMOUNT 1000000000000LL

#endif
