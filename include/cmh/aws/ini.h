/* The AWS shared config and credentials files (~/.aws/config, ~/.aws/credentials): INI as the AWS
 * SDKs read it (botocore's RawConfigParser): `[section]` headers (`[profile NAME]` in the config
 * file, spaces after "profile" folded), `key = value` or `key: value` with keys compared without
 * case, whole-line comments starting with '#' or ';', indented lines continuing the value before
 * them (nested settings, skipped here). Pure; thread: any. */
#ifndef CMH_AWS_INI_H
#define CMH_AWS_INI_H

#include <stddef.h>

/* Largest file accepted. */
#define CMH_AWS_INI_MAX (1u << 20)

/* The value of key in [section] of buf (len bytes): 0 with *out owned by the caller, or *out NULL
 * when the section has no such key; -ENOENT when there is no such section; -EINVAL for a line
 * that is none of the above or a key given twice in the section (*line gets its number when
 * line is not NULL); -ENOMEM. */
int cmh_aws_ini_get(const char *buf, size_t len, const char *section, const char *key, char **out,
                    unsigned *line);

#endif
