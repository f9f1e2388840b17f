/* Test seam of the service-account token (k8s/token.h): the one read of the file, which
 * struct cmh_k8s_token does for the program. Thread: any. */
#ifndef CMH_K8S_TOKEN_INT_H
#define CMH_K8S_TOKEN_INT_H

#include <stddef.h>

/* Reads the token in file (trailing blanks trimmed) into *out (owned by the caller). Returns 0,
 * or -errno / -EINVAL (empty, too long, holds a line break) with a sentence for the log in why. */
int cmh_k8s_token_read(const char *file, char **out, char *why, size_t whylen);

#endif
