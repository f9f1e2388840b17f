/* Test seam of the EC2 client (include/cmh/aws/ec2.h): its pure endpoint choice. */
#ifndef CMH_EC2_INT_H
#define CMH_EC2_INT_H

#include <stddef.h>

/* Pure: the endpoint URL (override when not NULL/"", else the regional one). Returns the length,
 * -EINVAL for a region that is not [a-z0-9-]+, -ENOSPC. */
int cmh_ec2_endpoint(const char *region, const char *override, char *buf, size_t len);

#endif
