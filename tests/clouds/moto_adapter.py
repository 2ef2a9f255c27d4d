"""Test-only: adapts libcloud's EC2 connection to moto's EC2 server, where moto differs from AWS.

Everything here is a moto divergence, so none of it belongs in the product driver:
1. moto's responses use the namespace ".../2016-11-15" without the trailing slash AWS sends; libcloud parses with the
   AWS one, so every list would come back empty.
2. moto wraps error bodies in <Response xmlns=...>; libcloud reads Errors/Error without a namespace, so errors would
   lose their code.
3. moto answers many actions (CreateTags, RebootInstances, ModifyInstanceAttribute, DisassociateAddress, ...) with
   an empty <XResponse> (a requestId at most) where AWS sends <return>true</return>; libcloud would read success as
   False.
4. With IAM checks on (the fixtures turn them on so a wrong secret really fails), moto recomputes the SigV4 signature
   with botocore, which never signs User-Agent; libcloud signs every header it sends, so moto would reject every
   request. AWS accepts a signed User-Agent. The adapter leaves User-Agent out of the signed request.
5. moto's authentication errors carry an extra <Type> element that AWS error bodies do not have; libcloud's parser
   expects exactly Code and Message.
6. moto checks the SigV4 signature against the raw query string, so a space sent as "+" (form encoding, which
   libcloud uses and AWS decodes) no longer matches the "%20" libcloud signed: any value with a space (an image
   name, a description) failed with AuthFailure. The adapter sends spaces as "%20" (valid for AWS too).
"""

from __future__ import annotations

import re
from typing import Any

from libcloud.compute.drivers.ec2 import NAMESPACE as AWS_NS
from libcloud.compute.drivers.ec2 import EC2Connection, EC2Response

from apps.clouds.drivers.libcloud_driver import EC2Driver, SkyportEC2NodeDriver

MOTO_NS = 'xmlns="' + AWS_NS.rstrip("/") + '"'
AWS_NS_ATTR = 'xmlns="' + AWS_NS + '"'
# a 200 body with nothing but (at most) a requestId: <XResponse .../> or <XResponse ...><requestId>..</requestId></X...>
EMPTY_OK = re.compile(r"<(\w+Response)(\s[^>]*)?(?:/>|>\s*(<requestId>[^<]*</requestId>)?\s*</\1>)\s*$")
ERROR_TYPE = re.compile(r"<Type>[^<]*</Type>")


def _inject_return(match: re.Match[str]) -> str:
    name, attrs, request_id = match.group(1), match.group(2) or "", match.group(3) or ""
    return f"<{name}{attrs}>{request_id}<return>true</return></{name}>"


class MotoEC2Response(EC2Response):
    def parse_body(self) -> Any:
        if self.body:
            self.body = EMPTY_OK.sub(_inject_return, self.body, count=1)
            self.body = self.body.replace(MOTO_NS, AWS_NS_ATTR, 1)
        return super().parse_body()

    def parse_error(self) -> Any:
        if self.body:
            self.body = self.body.replace(" " + MOTO_NS, "", 1)
            self.body = ERROR_TYPE.sub("", self.body)
        return super().parse_error()


class MotoEC2Connection(EC2Connection):
    responseCls = MotoEC2Response

    def pre_connect_hook(self, params: Any, headers: Any) -> Any:
        headers.pop("User-Agent", None)
        return super().pre_connect_hook(params, headers)

    def _retryable_request(self, url: str, *args: Any, **kwargs: Any) -> Any:
        # urlencode writes a literal "+" as %2B, so every "+" left in the query is a space
        path, sep, query = url.partition("?")
        return super()._retryable_request(path + sep + query.replace("+", "%20"), *args, **kwargs)


class MotoEC2NodeDriver(SkyportEC2NodeDriver):
    connectionCls = MotoEC2Connection


class MotoEC2Driver(EC2Driver):
    """The product EC2 driver, talking to moto through the adapted connection."""

    node_driver_class = MotoEC2NodeDriver
