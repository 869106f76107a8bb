/*
 * cli.h -- subcommands of the cqrsd binary that talk to a running server.
 */
#ifndef CQ_CLI_H
#define CQ_CLI_H

/* `cqrsd projections ...` (argv[1] == "projections"); returns the process
 * exit code: 0 done, 1 refused by the server, 2 usage or connection error. */
int cq_cli_projections(int argc, char **argv);

#endif
