/*
 * pgtest.h -- unit tests that need PostgreSQL: a fresh database per call
 * on the throwaway cluster that ctest's `pg` fixture started
 * (scripts/pg.sh; CQ_TEST_PG_DIR names its state directory).
 */
#ifndef CQ_PGTEST_H
#define CQ_PGTEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

/* The URI of a new, empty database (malloc'd), or NULL with a message on
 * stderr when there is no cluster; the test fails then: under ctest there
 * always is one. */
static char *pgtest_database(const char *tag)
{
    static int counter;
    const char *dir = getenv("CQ_TEST_PG_DIR");
    char path[1024], admin[512], sql[256], name[96], *uri;
    FILE *f;
    PGconn *c;
    PGresult *r;
    char *slash;
    int ok;

    if (dir == NULL) {
        fprintf(stderr, "pgtest: CQ_TEST_PG_DIR is not set (run under ctest, "
                        "or scripts/pg.sh start DIR and export it)\n");
        return NULL;
    }
    snprintf(path, sizeof path, "%s/uri", dir);
    f = fopen(path, "r");
    if (f == NULL || fgets(admin, sizeof admin, f) == NULL) {
        fprintf(stderr, "pgtest: cannot read %s\n", path);
        if (f != NULL)
            fclose(f);
        return NULL;
    }
    fclose(f);
    admin[strcspn(admin, "\r\n")] = '\0';
    snprintf(name, sizeof name, "t_%s_%ld_%d", tag, (long)getpid(), ++counter);
    c = PQconnectdb(admin);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "pgtest: %s", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s", name);
    PQclear(PQexec(c, sql));
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
    r = PQexec(c, sql);
    ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        fprintf(stderr, "pgtest: %s", PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
    if (!ok)
        return NULL;
    slash = strrchr(admin, '/');
    if (slash == NULL)
        return NULL;
    *slash = '\0';
    uri = malloc(strlen(admin) + strlen(name) + 2);
    if (uri != NULL)
        sprintf(uri, "%s/%s", admin, name);
    return uri;
}

#endif
