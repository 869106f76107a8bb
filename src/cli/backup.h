/*
 * backup.h -- `cqrsd backup` and `cqrsd restore` (docs/operations.md,
 * "Backup and restore"): the command line over src/store/backup.h. Unlike
 * the subcommands of cli.h they open the data directory's files
 * themselves (never over HTTP), so `backup` works beside a running
 * server and `restore` refuses one.
 */
#ifndef CQ_CLI_BACKUP_H
#define CQ_CLI_BACKUP_H

/* `cqrsd backup --data DIR --to PATH` or `cqrsd restore --from PATH
 * --data DIR [--force]` (argv[1] names which; argv is borrowed and only
 * read). Prints what it did on stdout and why it could not on stderr;
 * returns the process exit code: 0 done, 1 refused or failed (nothing
 * kept: no backup at PATH, or DIR untouched unless the failure came
 * while the files were being swapped in, which stderr says), 2 bad
 * usage. Single-threaded, no state: call from main(). */
int cq_cli_backup(int argc, char **argv);

#endif
