/* The `inspect` command for people: files as node scrapes, the datums one round would publish.
 * Thread: main only. */
#ifndef CMH_INSPECT_H
#define CMH_INSPECT_H

/* argv[0] is "inspect". cluster_id names the CLUSTER_ID dimension (may be NULL). Returns the exit
 * status: 0, 1 on failure, 2 on a bad command line or unreadable file. */
int cmh_inspect_cmd(int argc, char **argv, const char *cluster_id);

#endif
