/*
 * bank.c -- the bank example: accounts that are opened, take deposits and
 * withdrawals (never past their overdraft limit), and are closed at a zero
 * balance. A transfer is two commands correlated by a transfer id: a
 * Withdraw on one account naming the other, then a Deposit on the other
 * naming the first. The rules are tabled in README.md next to this file.
 *
 * What it shows that the orders example does not: a validate() callback
 * (rules across fields the schema cannot state), optional body fields
 * copied into events only when given, idempotency by a business id on both
 * sides of a correlated pair, a C-code projection in a module (code/,
 * apply() below) that is inline, and a second domain served beside
 * another one.
 *
 * Design decisions:
 *
 *  - Only the installed headers (<cqrs/...>) are used.
 *  - The transfer ids an account has seen, per side, are kept in jansson
 *    objects used as hash sets: a retried leg of a transfer is recognised
 *    in constant time and accepted with no events.
 *  - evolve() trusts no stored byte: a known event with a missing, mistyped
 *    or inconsistent field (a balance that does not add up) is
 *    CQ_ECORRUPT; unknown types are ignored.
 *  - Everything but apply() is pure; apply() writes only through
 *    cq_sql_exec and is idempotent (guarded by the stream version).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cqrs/module.h>

#include "bank.h"

#define SCHEMA 1                             /* of every event */
#define MAX_BALANCE (1000 * BANK_MAX_AMOUNT) /* 10^15 cents */

/* ---- state --------------------------------------------------------------- */

typedef enum status { NONE = 0, OPEN, CLOSED } status;

typedef struct account {
    status status;
    json_int_t balance, limit; /* cents; limit: how far below 0 it may go */
    json_t *withdrawn;         /* {transfer_id: true}: legs already taken */
    json_t *deposited;
} account;

static void *account_initial(void)
{
    account *a = calloc(1, sizeof *a);

    if (a == NULL)
        return NULL;
    a->withdrawn = json_object();
    a->deposited = json_object();
    if (a->withdrawn == NULL || a->deposited == NULL) {
        json_decref(a->withdrawn);
        json_decref(a->deposited);
        free(a);
        return NULL;
    }
    return a;
}

static void account_free(void *p)
{
    account *a = p;

    if (a == NULL)
        return;
    json_decref(a->withdrawn);
    json_decref(a->deposited);
    free(a);
}

static void *account_clone(const void *p)
{
    const account *a = p;
    account *c = malloc(sizeof *c);

    if (c == NULL)
        return NULL;
    *c = *a;
    c->withdrawn = json_deep_copy(a->withdrawn);
    c->deposited = json_deep_copy(a->deposited);
    if (c->withdrawn == NULL || c->deposited == NULL) {
        account_free(c);
        return NULL;
    }
    return c;
}

/* data.name as an integer in [min, max] into *out: 1, or 0 if it is not. */
static int int_field(const json_t *data, const char *name, json_int_t min,
                     json_int_t max, json_int_t *out)
{
    const json_t *v = json_object_get(data, name);

    if (!json_is_integer(v) || json_integer_value(v) < min ||
        json_integer_value(v) > max)
        return 0;
    *out = json_integer_value(v);
    return 1;
}

/* A deposit or withdrawal: amount and the new balance must add up, and a
 * transfer id, if any, is remembered on its side. */
static int evolve_move(account *a, const cq_event *ev, int sign, json_t *seen)
{
    const json_t *tid = json_object_get(ev->data, "transfer_id");
    json_int_t amount, balance;

    if (a->status != OPEN ||
        !int_field(ev->data, "amount_cents", 1, BANK_MAX_AMOUNT, &amount) ||
        !int_field(ev->data, "balance_cents", -BANK_MAX_AMOUNT, MAX_BALANCE,
                   &balance) ||
        balance != a->balance + sign * amount || balance < -a->limit ||
        (tid != NULL && !json_is_string(tid)))
        return CQ_ECORRUPT;
    if (tid != NULL &&
        json_object_set_new(seen, json_string_value(tid), json_true()) != 0)
        return CQ_ENOMEM;
    a->balance = balance;
    return CQ_OK;
}

static int account_evolve(void *p, const cq_event *ev)
{
    account *a = p;

    if (strcmp(ev->type, "AccountOpened") != 0 &&
        strcmp(ev->type, "MoneyDeposited") != 0 &&
        strcmp(ev->type, "MoneyWithdrawn") != 0 &&
        strcmp(ev->type, "AccountClosed") != 0)
        return CQ_OK; /* not ours */
    if (ev->schema_version != SCHEMA || !json_is_object(ev->data))
        return CQ_ECORRUPT;
    if (strcmp(ev->type, "AccountOpened") == 0) {
        if (a->status != NONE || !int_field(ev->data, "overdraft_limit_cents",
                                            0, BANK_MAX_AMOUNT, &a->limit))
            return CQ_ECORRUPT;
        a->status = OPEN;
        return CQ_OK;
    }
    if (strcmp(ev->type, "MoneyDeposited") == 0)
        return evolve_move(a, ev, 1, a->deposited);
    if (strcmp(ev->type, "MoneyWithdrawn") == 0)
        return evolve_move(a, ev, -1, a->withdrawn);
    if (a->status != OPEN || a->balance != 0) /* AccountClosed */
        return CQ_ECORRUPT;
    a->status = CLOSED;
    return CQ_OK;
}

static const cq_aggregate account_aggregate = {
    "account", account_initial, account_evolve, account_clone, account_free,
};

/* ---- commands ------------------------------------------------------------ */

#define ACCOUNT_ID                                                             \
    {                                                                          \
        .name = "account_id", .kind = CQ_FIELD_STRING, .min = 1, .max = 64,    \
        .chars = CQ_CHARS_ID                                                   \
    }
#define AMOUNT                                                                 \
    {                                                                          \
        .name = "amount_cents", .kind = CQ_FIELD_INTEGER, .min = 1,            \
        .max = BANK_MAX_AMOUNT                                                 \
    }
#define OPTIONAL_ID(n)                                                         \
    {                                                                          \
        .name = (n), .kind = CQ_FIELD_STRING, .optional = 1, .min = 1,         \
        .max = 64, .chars = CQ_CHARS_ID                                        \
    }

static const cq_field open_fields[] = {
    ACCOUNT_ID,
    {.name = "owner", .kind = CQ_FIELD_STRING, .min = 1, .max = 100},
    {.name = "currency",
     .kind = CQ_FIELD_STRING,
     .min = 3,
     .max = 3,
     .chars = CQ_CHARS_UPPER},
    {.name = "overdraft_limit_cents",
     .kind = CQ_FIELD_INTEGER,
     .optional = 1,
     .min = 0,
     .max = BANK_MAX_AMOUNT},
    {.kind = CQ_FIELD_END},
};

static const cq_field deposit_fields[] = {
    ACCOUNT_ID,
    AMOUNT,
    OPTIONAL_ID("transfer_id"),
    OPTIONAL_ID("from_account"),
    {.kind = CQ_FIELD_END},
};

static const cq_field withdraw_fields[] = {
    ACCOUNT_ID,
    AMOUNT,
    OPTIONAL_ID("transfer_id"),
    OPTIONAL_ID("to_account"),
    {.kind = CQ_FIELD_END},
};

static const cq_field close_fields[] = {
    ACCOUNT_ID,
    {.kind = CQ_FIELD_END},
};

static const char *str(const json_t *body, const char *name)
{
    return json_string_value(json_object_get(body, name));
}

static int account_stream_id(const json_t *body, char *buf, size_t cap)
{
    const char *id = str(body, "account_id");
    int n = id != NULL ? snprintf(buf, cap, "account-%s", id) : -1;

    return n > 0 && (size_t)n < cap ? CQ_OK : CQ_EINVAL;
}

/* A transfer leg names the other account and the transfer; the other
 * account is not this one. `other` is "to_account" or "from_account". */
static int validate_leg(const json_t *body, const char *other, cq_errors *errs)
{
    const char *acc = str(body, "account_id"), *o = str(body, other);
    int before = cq_errors_count(errs);

    if (o != NULL && str(body, "transfer_id") == NULL)
        cq_errors_add(errs, "transfer_id", "is required with %s", other);
    if (o != NULL && acc != NULL && strcmp(o, acc) == 0)
        cq_errors_add(errs, other, "must be another account than account_id");
    return cq_errors_count(errs) - before;
}

static int validate_deposit(const json_t *body, cq_errors *errs)
{
    return validate_leg(body, "from_account", errs);
}

static int validate_withdraw(const json_t *body, cq_errors *errs)
{
    return validate_leg(body, "to_account", errs);
}

static int decide_open(const void *p, const json_t *body, cq_decision *d)
{
    const account *a = p;
    json_t *limit = json_object_get(body, "overdraft_limit_cents");

    if (a->status != NONE)
        return cq_decision_refuse(d, "account %s already exists",
                                  str(body, "account_id"));
    return cq_decision_emit(
        d, "AccountOpened", SCHEMA,
        json_pack("{s:s, s:s, s:s, s:I}", "account_id", str(body, "account_id"),
                  "owner", str(body, "owner"), "currency",
                  str(body, "currency"), "overdraft_limit_cents",
                  json_is_integer(limit) ? json_integer_value(limit) : 0));
}

/* Deposit (sign 1) or Withdraw (-1). `other` names the counterparty's
 * field in the body ("from_account" / "to_account"). */
static int decide_move(const account *a, const json_t *body, cq_decision *d,
                       int sign, const char *type, const json_t *seen,
                       const char *other)
{
    const char *acc = str(body, "account_id"), *tid = str(body, "transfer_id");
    json_int_t amount =
        json_integer_value(json_object_get(body, "amount_cents"));
    json_int_t balance = a->balance + sign * amount;
    json_t *data;

    if (a->status == NONE)
        return cq_decision_refuse(d, "account %s does not exist", acc);
    if (tid != NULL && json_object_get(seen, tid) != NULL)
        return CQ_OK; /* this leg of the transfer is done: a retry */
    if (a->status == CLOSED)
        return cq_decision_refuse(d, "account %s is closed", acc);
    if (amount < 1 || amount > BANK_MAX_AMOUNT)
        return CQ_EINVAL; /* the schema check let it through? never */
    if (sign < 0 && balance < -a->limit)
        return cq_decision_refuse(
            d,
            "withdrawing %lld would overdraw account %s: balance %lld, "
            "overdraft limit %lld",
            (long long)amount, acc, (long long)a->balance, (long long)a->limit);
    if (sign > 0 && balance > MAX_BALANCE)
        return cq_decision_refuse(d, "account %s cannot hold more than %lld",
                                  acc, (long long)MAX_BALANCE);
    data = json_pack("{s:s, s:I, s:I}", "account_id", acc, "amount_cents",
                     amount, "balance_cents", balance);
    if (data != NULL && tid != NULL &&
        json_object_set_new(data, "transfer_id", json_string(tid)) != 0)
        json_decref(data), data = NULL;
    if (data != NULL && str(body, other) != NULL &&
        json_object_set_new(data, "counterparty",
                            json_string(str(body, other))) != 0)
        json_decref(data), data = NULL;
    if (data == NULL)
        return CQ_ENOMEM;
    return cq_decision_emit(d, type, SCHEMA, data);
}

static int decide_deposit(const void *p, const json_t *body, cq_decision *d)
{
    const account *a = p;
    return decide_move(a, body, d, 1, "MoneyDeposited", a->deposited,
                       "from_account");
}

static int decide_withdraw(const void *p, const json_t *body, cq_decision *d)
{
    const account *a = p;
    return decide_move(a, body, d, -1, "MoneyWithdrawn", a->withdrawn,
                       "to_account");
}

static int decide_close(const void *p, const json_t *body, cq_decision *d)
{
    const account *a = p;
    const char *acc = str(body, "account_id");

    if (a->status == NONE)
        return cq_decision_refuse(d, "account %s does not exist", acc);
    if (a->status == CLOSED)
        return cq_decision_refuse(d, "account %s is already closed", acc);
    if (a->balance != 0)
        return cq_decision_refuse(
            d, "account %s has a balance of %lld: only an account at 0 closes",
            acc, (long long)a->balance);
    return cq_decision_emit(d, "AccountClosed", SCHEMA,
                            json_pack("{s:s}", "account_id", acc));
}

static const cq_command_def open_account = {
    .type = "OpenAccount",
    .aggregate = &account_aggregate,
    .schema = open_fields,
    .expect = CQ_EXPECT_NEW,
    .stream_id = account_stream_id,
    .decide = decide_open,
};

static const cq_command_def deposit = {
    .type = "Deposit",
    .aggregate = &account_aggregate,
    .schema = deposit_fields,
    .expect = CQ_EXPECT_EXISTS,
    .stream_id = account_stream_id,
    .validate = validate_deposit,
    .decide = decide_deposit,
};

static const cq_command_def withdraw = {
    .type = "Withdraw",
    .aggregate = &account_aggregate,
    .schema = withdraw_fields,
    .expect = CQ_EXPECT_EXISTS,
    .stream_id = account_stream_id,
    .validate = validate_withdraw,
    .decide = decide_withdraw,
};

static const cq_command_def close_account = {
    .type = "CloseAccount",
    .aggregate = &account_aggregate,
    .schema = close_fields,
    .expect = CQ_EXPECT_EXISTS,
    .stream_id = account_stream_id,
    .decide = decide_close,
};

static const cq_command_def *const bank_commands[] = {
    &open_account, &deposit, &withdraw, &close_account, NULL,
};

static const char *const bank_categories[] = {"account", NULL};

static const char *const bank_event_types[] = {
    "AccountOpened", "MoneyDeposited", "MoneyWithdrawn", "AccountClosed", NULL,
};

static const cq_domain bank = {
    .name = "bank",
    .commands = bank_commands,
    .categories = bank_categories,
    .event_types = bank_event_types,
};

const cq_domain *bank_domain(void)
{
    return &bank;
}

/* ---- the inline read model "available_balances", in C -------------------- */

/* What an account can spend now: its balance plus its overdraft limit, 0
 * once closed. The declared part (tables, query) is
 * code/available_balances.sql; every event of the bank's streams comes
 * here, inside the command's transaction. Idempotent: each update is
 * guarded by the stream version. */
static int available_apply(void *arg, cq_sql *sql,
                           const cq_projection_event *ev)
{
    static const char opened[] =
        "INSERT INTO available_balances (account_id, currency, balance_cents,"
        " overdraft_limit_cents, available_cents, status, version)"
        " VALUES (?1, ?2, 0, ?3, ?3, 'open', ?4)"
        " ON CONFLICT (account_id) DO NOTHING";
    static const char moved[] =
        "UPDATE available_balances SET balance_cents = ?2,"
        " available_cents = ?2 + overdraft_limit_cents, version = ?3"
        " WHERE account_id = ?1 AND version < ?3";
    static const char closed[] =
        "UPDATE available_balances SET available_cents = 0,"
        " status = 'closed', version = ?2"
        " WHERE account_id = ?1 AND version < ?2";
    const char *acc =
        json_string_value(json_object_get(ev->data, "account_id"));
    json_int_t n;

    if (strncmp(ev->stream_id, "account-", 8) != 0)
        return CQ_OK; /* another domain's event */
    if (acc == NULL)
        return CQ_ECORRUPT;
    if (strcmp(ev->type, "AccountOpened") == 0) {
        const char *cur =
            json_string_value(json_object_get(ev->data, "currency"));
        cq_sql_value v[4] = {CQ_SQL_TEXT_VALUE(acc), CQ_SQL_TEXT_VALUE(cur),
                             CQ_SQL_INT_VALUE(0),
                             CQ_SQL_INT_VALUE(ev->version)};
        if (cur == NULL || !int_field(ev->data, "overdraft_limit_cents", 0,
                                      BANK_MAX_AMOUNT, &n))
            return CQ_ECORRUPT;
        v[2].i = n;
        return cq_sql_exec(sql, opened, v, 4);
    }
    if (strcmp(ev->type, "MoneyDeposited") == 0 ||
        strcmp(ev->type, "MoneyWithdrawn") == 0) {
        cq_sql_value v[3] = {CQ_SQL_TEXT_VALUE(acc), CQ_SQL_INT_VALUE(0),
                             CQ_SQL_INT_VALUE(ev->version)};
        if (!int_field(ev->data, "balance_cents", -BANK_MAX_AMOUNT, MAX_BALANCE,
                       &n))
            return CQ_ECORRUPT;
        v[1].i = n;
        return cq_sql_exec(sql, moved, v, 3);
    }
    if (strcmp(ev->type, "AccountClosed") == 0) {
        cq_sql_value v[2] = {CQ_SQL_TEXT_VALUE(acc),
                             CQ_SQL_INT_VALUE(ev->version)};
        return cq_sql_exec(sql, closed, v, 2);
    }
    return CQ_OK;
}

/* ---- the module ------------------------------------------------------------
 */

/* Declared projections in projections/ (account_balances, transfers); the
 * C-code one's declared part in code/, outside that folder. */
static const cq_module_code bank_code[] = {
    {"code/available_balances.sql",
     {"available_balances", available_apply, NULL}},
    {NULL, {NULL, NULL, NULL}},
};

static const cq_module bank_module = {
    .abi = CQ_ABI_INIT,
    .domain = &bank,
    .projections = "projections",
    .code = bank_code,
};

const cq_module *cq_module_init(void)
{
    return &bank_module;
}
