/*
 * backup.c -- `cqrsd backup` and `cqrsd restore` (see backup.h and
 * src/store/backup.h for what they guarantee).
 *
 *   cqrsd backup --data DIR --to PATH
 *   cqrsd restore --from PATH --data DIR [--force]
 */
#include "cli/backup.h"

#include <stdio.h>
#include <string.h>

#include "cqrs/cqrs.h"
#include "store/backup.h"

static int usage(void)
{
    fputs("usage: cqrsd backup --data DIR --to PATH\n"
          "       cqrsd restore --from PATH --data DIR [--force]\n",
          stderr);
    return 2;
}

static void print_info(const char *what, const char *where,
                       const cq_backup_info *in)
{
    printf("%s %s: events.db %lld bytes, head position %lld; ", what, where,
           (long long)in->events_bytes, (long long)in->head);
    if (in->read_bytes < 0)
        printf("no read.db (the read models are built from the events)\n");
    else
        printf("read.db %lld bytes, %d checkpoints, the highest at %lld\n",
               (long long)in->read_bytes, in->checkpoints,
               (long long)in->max_checkpoint);
}

int cq_cli_backup(int argc, char **argv)
{
    const char *data = NULL, *to = NULL, *from = NULL;
    int restore = strcmp(argv[1], "restore") == 0, force = 0, rc;
    cq_backup_info info;
    char err[1024];

    for (int i = 2; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (restore && strcmp(argv[i], "--force") == 0) {
            force = 1;
            continue;
        }
        if (v == NULL)
            return usage();
        if (strcmp(argv[i], "--data") == 0)
            data = v;
        else if (!restore && strcmp(argv[i], "--to") == 0)
            to = v;
        else if (restore && strcmp(argv[i], "--from") == 0)
            from = v;
        else
            return usage();
        i++;
    }
    if (data == NULL || (restore ? from == NULL : to == NULL))
        return usage();
    if (!restore) {
        rc = cq_backup(data, to, &info, err, sizeof err);
        if (rc != CQ_OK) {
            fprintf(stderr, "cqrsd: backup: %s\n", err);
            return 1;
        }
        print_info("backed up into", to, &info);
        return 0;
    }
    rc = cq_restore(from, data, force, &info, err, sizeof err);
    if (rc != CQ_OK) {
        fprintf(stderr, "cqrsd: restore: %s\n", err);
        return 1;
    }
    print_info("restored into", data, &info);
    return 0;
}
