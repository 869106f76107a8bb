/*
 * cli.h -- subcommands of the cqrsd binary that are not the server: those
 * that talk to a running server over HTTP (src/cli/README.md: the
 * requests, following a rebuild, the exit codes), which open none of the
 * server's files, and `cqrsd new`, which writes a new domain project.
 */
#ifndef CQ_CLI_H
#define CQ_CLI_H

#include <stddef.h>

/* `cqrsd projections ...` (argv[1] == "projections"; argv is borrowed and
 * only read). Prints the answer on stdout and problems on stderr, and
 * returns the process exit code -- not a CQ_* code, since it is main()'s
 * answer: 0 done, 1 refused by the server or a failed rebuild, 2 usage or
 * connection error. Blocks until the server answered (a followed rebuild:
 * until it ended). Single-threaded, no state: call from main(). */
int cq_cli_projections(int argc, char **argv);

/* One file of the project `cqrsd new` writes: its path under the project
 * and its text, with @NAME@, @PASCAL@, @UPPER@ and @VERSION@ still to be
 * replaced (in both). The files are src/cli/new/, compiled in by CMake
 * (cmake/embed.cmake) into cq_new_templates, ended by name NULL. */
typedef struct cq_new_template {
    const char *name;
    const char *text;
    size_t len;
} cq_new_template;

extern const cq_new_template cq_new_templates[];

/* `cqrsd new NAME [DIR]` (argv[1] == "new"; argv borrowed, only read):
 * write a domain project for NAME (1-32 of [a-z0-9_], starting with a
 * letter, not cq_...) into DIR (default ./NAME), which must not exist or
 * be an empty directory; no file is overwritten. Prints the files written
 * and the next steps on stdout, problems on stderr. Returns the process
 * exit code: 0 written, 1 a file could not be written (those before it
 * stay), 2 usage. Single-threaded: call from main(). */
int cq_cli_new(int argc, char **argv);

/* `cqrsd tokens add NAME --scopes LIST | list | revoke NAME [--data DIR |
 * --tokens FILE]` (argv[1] == "tokens"; argv borrowed, only read): edit
 * the token file (src/http/auth.h). add prints the new secret on stdout,
 * once. Returns the exit code: 0 done, 1 refused (name taken, unknown)
 * or the file cannot be read or written, 2 usage. Single-threaded. */
int cq_cli_tokens(int argc, char **argv);

#endif
