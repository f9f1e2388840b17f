/* Test seam of the EC2 answer parser (include/cmh/aws/ec2_xml.h): a whole answer at once, for
 * the unit tests, the fuzzer and the botocore oracle. */
#ifndef CMH_EC2_XML_INT_H
#define CMH_EC2_XML_INT_H

#include "cmh/aws/ec2_xml.h"

/* One-shot: new, one feed with final set, free. */
int cmh_ec2_parse(const char *buf, size_t len, struct cmh_ec2_page *page);

#endif
