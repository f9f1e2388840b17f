/* The `parse` command for people and tests: one exposition in, every sample out in canonical
 * form. Thread: main only. */
#ifndef CMH_PARSE_H
#define CMH_PARSE_H

/* Parses one exposition (a file, or standard input for "-" or no argument) and prints every sample
 * in canonical form on stdout. argv[0] is "parse". Returns the exit status: 0, 1 on malformed input
 * ("line N: reason" on stderr), 2 on a bad command line or unreadable file. */
int cmh_parse_cmd(int argc, char **argv);

#endif
