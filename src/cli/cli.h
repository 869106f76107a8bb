/*
 * cli.h -- subcommands of the cqrsd binary that talk to a running server
 * over HTTP (src/cli/README.md: the requests, following a rebuild, the
 * exit codes). They open none of the server's files.
 */
#ifndef CQ_CLI_H
#define CQ_CLI_H

/* `cqrsd projections ...` (argv[1] == "projections"; argv is borrowed and
 * only read). Prints the answer on stdout and problems on stderr, and
 * returns the process exit code -- not a CQ_* code, since it is main()'s
 * answer: 0 done, 1 refused by the server or a failed rebuild, 2 usage or
 * connection error. Blocks until the server answered (a followed rebuild:
 * until it ended). Single-threaded, no state: call from main(). */
int cq_cli_projections(int argc, char **argv);

#endif
