/*
 * verify_table.c -- step 4 of `cqrsd verify` (see verify.c): one table of
 * the replay compared with the live table of the same name, and each
 * difference written as one readable line.
 *
 * First the columns (cq_rdb_columns): the live table must exist and have
 * the same column names in the same order. Then both sides are read
 * ORDER BY (typeof(c), c COLLATE BINARY) over the key columns (the
 * primary key in its order, or every column when there is none) and then
 * the others, and the two ordered streams are merged: a key only in the
 * replay is "missing in live", a key only in the live table is
 * "unexpected in live", the same key with other values "differs" (each
 * differing column named, live and replay values side by side). Because
 * compare_cell() ranks types as `ORDER BY typeof(c)` does and compares
 * values as BINARY does, the merge and the SQL agree on one total order,
 * and two values are equal only when their SQLite type and value are.
 *
 * Values are printed on one line (put_value): NULL, integers, reals as
 * the database shows them, texts quoted with control bytes escaped and
 * long ones cut, blobs as X'..'. At most CQ_VERIFY_MAX_LINES differences
 * are printed per table, then a count.
 *
 * Thread: the caller's; no state outside the call.
 */
#include "projection/verify_int.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/base.h"
#include "base/strbuf.h"
#include "store/rdb.h"

/* ---- values and rows ------------------------------------------------------
 */

/* Rank of a column's type in `ORDER BY typeof(c)`: the names sort as blob <
 * integer < null < real < text. */
static int type_rank(cq_rtype t)
{
    switch (t) {
    case CQ_RTYPE_BLOB: return 0;
    case CQ_RTYPE_INT: return 1;
    case CQ_RTYPE_NULL: return 2;
    case CQ_RTYPE_REAL: return 3;
    default: return 4; /* CQ_RTYPE_TEXT */
    }
}

/* Compare column ia of row a with column ib of row b in the order of
 * `ORDER BY typeof(c), c COLLATE BINARY`: <0, 0 (same type and value), >0. */
static int compare_cell(cq_rstmt *a, int ia, cq_rstmt *b, int ib)
{
    cq_rtype ta = cq_rstmt_column_type(a, ia), tb = cq_rstmt_column_type(b, ib);
    int ra = type_rank(ta), rb = type_rank(tb);

    if (ra != rb)
        return ra < rb ? -1 : 1;
    switch (ta) {
    case CQ_RTYPE_NULL: return 0;
    case CQ_RTYPE_INT: {
        int64_t x = cq_rstmt_column_int(a, ia);
        int64_t y = cq_rstmt_column_int(b, ib);
        return x < y ? -1 : x > y;
    }
    case CQ_RTYPE_REAL: {
        double x = cq_rstmt_column_double(a, ia);
        double y = cq_rstmt_column_double(b, ib);
        return x < y ? -1 : x > y;
    }
    default: { /* TEXT and BLOB: memcmp, then the shorter first (BINARY) */
        const void *x = ta == CQ_RTYPE_TEXT
                            ? (const void *)cq_rstmt_column_text(a, ia)
                            : cq_rstmt_column_blob(a, ia);
        int nx = cq_rstmt_column_bytes(a, ia);
        const void *y = ta == CQ_RTYPE_TEXT
                            ? (const void *)cq_rstmt_column_text(b, ib)
                            : cq_rstmt_column_blob(b, ib);
        int ny = cq_rstmt_column_bytes(b, ib);
        int c = nx && ny ? memcmp(x, y, (size_t)(nx < ny ? nx : ny)) : 0;
        if (c != 0)
            return c;
        return nx < ny ? -1 : nx > ny;
    }
    }
}

/* Columns [from, to) of rows a and b, compared in order. */
static int compare_cols(cq_rstmt *a, cq_rstmt *b, int from, int to)
{
    for (int i = from; i < to; i++) {
        int c = compare_cell(a, i, b, i);
        if (c != 0)
            return c;
    }
    return 0;
}

/* Append column i of st, readable on one line: NULL, 42, 1.5, 'text'
 * (quotes doubled, control bytes as \xNN, cut after 60 bytes), X'0a0b'.
 * A REAL is written as its database shows it (cq_rdb_format_real). */
static void put_value(cq_strbuf *s, cq_rstmt *st, int i)
{
    switch (cq_rstmt_column_type(st, i)) {
    case CQ_RTYPE_NULL: cq_strbuf_puts(s, "NULL"); break;
    case CQ_RTYPE_INT:
        cq_strbuf_printf(s, "%lld", (long long)cq_rstmt_column_int(st, i));
        break;
    case CQ_RTYPE_REAL: {
        char num[64];
        cq_rdb_format_real(cq_rstmt_db(st), cq_rstmt_column_double(st, i), num,
                           sizeof num);
        cq_strbuf_puts(s, num);
        break;
    }
    case CQ_RTYPE_TEXT: {
        const unsigned char *t =
            (const unsigned char *)cq_rstmt_column_text(st, i);
        int n = cq_rstmt_column_bytes(st, i);
        cq_strbuf_add(s, "'", 1);
        for (int k = 0; k < n && k < 60; k++) {
            if (t[k] == '\'')
                cq_strbuf_add(s, "''", 2);
            else if (t[k] < 0x20 || t[k] == 0x7f)
                cq_strbuf_printf(s, "\\x%02x", t[k]);
            else
                cq_strbuf_add(s, (const char *)&t[k], 1);
        }
        cq_strbuf_add(s, "'", 1);
        if (n > 60)
            cq_strbuf_printf(s, "...(%d bytes)", n);
        break;
    }
    default: {
        const unsigned char *b = cq_rstmt_column_blob(st, i);
        int n = cq_rstmt_column_bytes(st, i);
        cq_strbuf_puts(s, "X'");
        for (int k = 0; k < n && k < 32; k++)
            cq_strbuf_printf(s, "%02x", b[k]);
        cq_strbuf_add(s, "'", 1);
        if (n > 32)
            cq_strbuf_printf(s, "...(%d bytes)", n);
    }
    }
}

/* Append name as a quoted SQL identifier: "name", with " doubled. */
static void put_ident(cq_strbuf *s, const char *name)
{
    cq_strbuf_add(s, "\"", 1);
    for (const char *q; (q = strchr(name, '"')) != NULL; name = q + 1) {
        cq_strbuf_add(s, name, (size_t)(q - name) + 1);
        cq_strbuf_add(s, "\"", 1);
    }
    cq_strbuf_puts(s, name);
    cq_strbuf_add(s, "\"", 1);
}

/* ---- one table -------------------------------------------------------------
 */

/* A table's columns, as cq_rdb_columns tells them. */
typedef struct columns {
    char **name;
    int *pk;        /* 1-based position in the primary key, 0 if not in it */
    cq_rtype *type; /* what its values are, or CQ_RTYPE_NULL: any */
    int n;
    int oom; /* while reading: out of memory */
} columns;

static void columns_free(columns *c)
{
    for (int i = 0; i < c->n; i++)
        free(c->name[i]);
    free(c->name);
    free(c->pk);
    free(c->type);
    memset(c, 0, sizeof *c);
}

/* cq_rdb_columns' callback: one more column into arg (a columns). */
static int add_column(void *arg, const char *name, int pk, cq_rtype type)
{
    columns *c = arg;
    char **nn = realloc(c->name, (size_t)(c->n + 1) * sizeof *nn);
    cq_rtype *nt;
    int *np;

    if (nn == NULL)
        goto oom;
    c->name = nn;
    np = realloc(c->pk, (size_t)(c->n + 1) * sizeof *np);
    if (np == NULL)
        goto oom;
    c->pk = np;
    nt = realloc(c->type, (size_t)(c->n + 1) * sizeof *nt);
    if (nt == NULL)
        goto oom;
    c->type = nt;
    if ((c->name[c->n] = strdup(name)) == NULL)
        goto oom;
    c->pk[c->n] = pk;
    c->type[c->n] = type;
    c->n++;
    return 0;
oom:
    c->oom = 1;
    return 1;
}

/* Read the columns of `table` in db (none if it does not exist). */
static int columns_read(cq_rdb *db, const char *table, columns *c, char *err,
                        size_t errcap)
{
    int rc;

    memset(c, 0, sizeof *c);
    rc = cq_rdb_columns(db, table, add_column, c, err, errcap);
    if (c->oom) {
        snprintf(err, errcap, "out of memory");
        columns_free(c);
        return CQ_ENOMEM;
    }
    if (rc == CQ_ENOTFOUND)
        return CQ_OK; /* no such table: no columns */
    if (rc != CQ_OK) {
        columns_free(c);
        return CQ_EIO;
    }
    return CQ_OK;
}

/* Where one table's differences are reported, and how many so far. */
typedef struct table_report {
    FILE *out;
    const char *proj, *table;
    const columns *cols;
    const int *order; /* select position -> column index in cols */
    int nkey;         /* the first nkey select positions are the key */
    int64_t found;    /* differences in this table */
} table_report;

/* Report a row of st present on one side only (kind: "missing in live",
 * "unexpected in live"), or, with other != NULL, a key whose other
 * columns differ (st: live, other: replay). */
static void report_row(table_report *t, cq_rstmt *st, cq_rstmt *other,
                       const char *kind)
{
    cq_strbuf b = CQ_STRBUF_INIT, *s = &b;
    char *line;

    t->found++;
    if (t->found > CQ_VERIFY_MAX_LINES)
        return;
    cq_strbuf_printf(s, "%s/%s: ", t->proj, t->table);
    for (int i = 0; i < t->nkey; i++) {
        cq_strbuf_printf(s, "%s%s=", i ? ", " : "", t->cols->name[t->order[i]]);
        put_value(s, st, i);
    }
    cq_strbuf_printf(s, ": %s", kind);
    if (other != NULL) {
        int first = 1;
        for (int i = t->nkey; i < t->cols->n; i++) {
            if (compare_cell(st, i, other, i) == 0)
                continue;
            cq_strbuf_printf(s, "%s %s live ", first ? ":" : ";",
                             t->cols->name[t->order[i]]);
            put_value(s, st, i);
            cq_strbuf_puts(s, ", replay ");
            put_value(s, other, i);
            first = 0;
        }
    }
    line = cq_strbuf_take(s);
    if (line != NULL)
        fprintf(t->out, "%s\n", line);
    free(line);
}

/* Append the sort key of column `name` of type t: its values in the
 * order of `ORDER BY typeof(c), c COLLATE BINARY` (compare_cell's). A
 * column that holds values of any type (t CQ_RTYPE_NULL: SQLite) says so
 * itself; in a typed one (PostgreSQL), every value but NULL has t's rank,
 * NULL ranks as typeof's 'null' does, and text is ordered by its UTF-8
 * bytes, whatever the database's collation. */
static void put_order(cq_strbuf *b, const char *name, cq_rtype t)
{
    if (t == CQ_RTYPE_NULL) {
        cq_strbuf_puts(b, "typeof(");
        put_ident(b, name);
        cq_strbuf_puts(b, "), ");
        put_ident(b, name);
        cq_strbuf_puts(b, " COLLATE BINARY");
        return;
    }
    cq_strbuf_puts(b, "CASE WHEN ");
    put_ident(b, name);
    cq_strbuf_printf(b, " IS NULL THEN %d ELSE %d END, ",
                     type_rank(CQ_RTYPE_NULL), type_rank(t));
    if (t == CQ_RTYPE_TEXT) {
        cq_strbuf_puts(b, "convert_to(CAST(");
        put_ident(b, name);
        cq_strbuf_puts(b, " AS TEXT), 'UTF8')");
    } else {
        put_ident(b, name);
    }
}

/* `SELECT cols FROM table ORDER BY ...` for the merge (see step 4), with
 * c as db tells them (their names as db spells them). A database that
 * types its columns (PostgreSQL) folds the table's unquoted name to lower
 * case, as it did when the DDL made it. */
static char *select_sql(const char *table, const columns *c, const int *order)
{
    cq_strbuf b = CQ_STRBUF_INIT;
    int typed = 0;

    cq_strbuf_puts(&b, "SELECT ");
    for (int i = 0; i < c->n; i++) {
        cq_strbuf_puts(&b, i ? ", " : "");
        put_ident(&b, c->name[order[i]]);
        typed |= c->type[i] != CQ_RTYPE_NULL;
    }
    cq_strbuf_puts(&b, " FROM ");
    if (typed) {
        char *lower = strdup(table);
        if (lower == NULL) {
            cq_strbuf_reset(&b);
            return NULL;
        }
        for (char *q = lower; *q; q++)
            if (*q >= 'A' && *q <= 'Z')
                *q = (char)(*q - 'A' + 'a');
        put_ident(&b, lower);
        free(lower);
    } else {
        put_ident(&b, table);
    }
    cq_strbuf_puts(&b, " ORDER BY ");
    for (int i = 0; i < c->n; i++) {
        cq_strbuf_puts(&b, i ? ", " : "");
        put_order(&b, c->name[order[i]], c->type[order[i]]);
    }
    return cq_strbuf_take(&b);
}

/* Compare `table` in live with the replay in scratch; adds to *diffs and
 * *rows (rows of the replay). CQ_OK (whatever was found), or CQ_EIO /
 * CQ_ENOMEM when a side cannot be read. */
int verify_compare_table(FILE *out, const char *proj, cq_rdb *live,
                         cq_rdb *scratch, const char *table, int64_t *diffs,
                         int64_t *rows, char *err, size_t errcap)
{
    columns want, have;
    int *order = NULL;
    char *lsql = NULL, *rsql = NULL, ignore[64];
    cq_rstmt *ls = NULL, *rs = NULL;
    table_report t;
    int lrc, rrc, nkey = 0, rc;

    memset(&have, 0, sizeof have);
    rc = columns_read(scratch, table, &want, err, errcap);
    if (rc != CQ_OK)
        return rc;
    rc = columns_read(live, table, &have, err, errcap);
    if (rc != CQ_OK)
        goto done;
    if (have.n == 0) {
        fprintf(out, "%s/%s: table missing in live\n", proj, table);
        (*diffs)++;
        goto done;
    }
    if (have.n != want.n) {
        fprintf(out, "%s/%s: columns differ: live has %d, replay %d\n", proj,
                table, have.n, want.n);
        (*diffs)++;
        goto done;
    }
    /* names without regard to ASCII case, as both databases take them */
    for (int i = 0; i < want.n; i++)
        if (strcasecmp(want.name[i], have.name[i]) != 0) {
            fprintf(out,
                    "%s/%s: columns differ: live column %d is %s, "
                    "replay %s\n",
                    proj, table, i + 1, have.name[i], want.name[i]);
            (*diffs)++;
            goto done;
        }

    /* key columns first, in primary-key order; then the others */
    order = want.n > 0 ? calloc((size_t)want.n, sizeof *order) : NULL;
    if (order == NULL) {
        snprintf(err, errcap, "out of memory");
        rc = CQ_ENOMEM;
        goto done;
    }
    for (int k = 1; k <= want.n; k++)
        for (int i = 0; i < want.n; i++)
            if (want.pk[i] == k)
                order[nkey++] = i;
    for (int i = 0, j = nkey; i < want.n; i++)
        if (want.pk[i] == 0)
            order[j++] = i;
    if (nkey == 0)
        nkey = want.n; /* no primary key: a row is its own key */

    /* each side in the same order, in its own dialect */
    lsql = select_sql(table, &have, order);
    rsql = select_sql(table, &want, order);
    if (lsql == NULL || rsql == NULL) {
        snprintf(err, errcap, "out of memory");
        rc = CQ_ENOMEM;
        goto done;
    }
    if (cq_rdb_prepare(live, lsql, 0, &ls, ignore, sizeof ignore) != CQ_OK) {
        snprintf(err, errcap, "%s/%s: live: %s", proj, table,
                 cq_rdb_errmsg(live));
        rc = CQ_EIO;
        goto done;
    }
    if (cq_rdb_prepare(scratch, rsql, 0, &rs, ignore, sizeof ignore) != CQ_OK) {
        snprintf(err, errcap, "%s/%s: replay: %s", proj, table,
                 cq_rdb_errmsg(scratch));
        rc = CQ_EIO;
        goto done;
    }

    memset(&t, 0, sizeof t);
    t.out = out;
    t.proj = proj;
    t.table = table;
    t.cols = &want;
    t.order = order;
    t.nkey = nkey;
    lrc = cq_rstmt_step(ls);
    rrc = cq_rstmt_step(rs);
    while (lrc == CQ_RSTEP_ROW || rrc == CQ_RSTEP_ROW) {
        int c = lrc != CQ_RSTEP_ROW   ? 1
                : rrc != CQ_RSTEP_ROW ? -1
                                      : compare_cols(ls, rs, 0, nkey);
        if (c < 0) {
            report_row(&t, ls, NULL, "unexpected in live");
            lrc = cq_rstmt_step(ls);
            continue;
        }
        if (c > 0)
            report_row(&t, rs, NULL, "missing in live");
        else if (compare_cols(ls, rs, nkey, want.n) != 0)
            report_row(&t, ls, rs, "differs");
        if (c == 0)
            lrc = cq_rstmt_step(ls);
        rrc = cq_rstmt_step(rs);
        (*rows)++;
    }
    if (lrc != CQ_RSTEP_DONE || rrc != CQ_RSTEP_DONE) {
        cq_rdb *db = lrc != CQ_RSTEP_DONE ? live : scratch;
        snprintf(err, errcap, "%s/%s: reading %s: %s", proj, table,
                 db == live ? "live rows" : "replayed rows", cq_rdb_errmsg(db));
        rc = CQ_EIO;
        goto done;
    }
    if (t.found > CQ_VERIFY_MAX_LINES)
        fprintf(out, "%s/%s: ... and %lld more differences\n", proj, table,
                (long long)(t.found - CQ_VERIFY_MAX_LINES));
    *diffs += t.found;
done:
    cq_rstmt_finalize(ls);
    cq_rstmt_finalize(rs);
    free(lsql);
    free(rsql);
    free(order);
    columns_free(&want);
    columns_free(&have);
    return rc;
}
