#!/usr/bin/python3
"""Lays out a one-node, one-replica OpenStack Swift under DIR for tests.

Writes the rings (through Swift's own RingBuilder API, in one process: the
swift-ring-builder CLI costs ~1.7 s per call here) and the four server
configs (account, container, object, proxy with s3api + tempauth), all
bound to 127.0.0.1 on the ports given. The servers are started by the test
harness (tests/common/swift.rs) in the foreground, `workers = 0`, `-v`.
Swift always reads /etc/swift/swift.conf (the package's copy is kept);
everything else lives under DIR.

usage: swift-setup.py DIR --account-port N --container-port N --object-port N
                      --proxy-port N [--region us-east-1] [--cert PEM --key PEM]
       swift-setup.py --make-bucket NAME --proxy-url URL
           (needs the memcached of --memcache-port running) creates a bucket (a Swift container) through Swift's own API with
           tempauth (no request signing needed); TLS is not verified there.
"""

import argparse
import os
import sys

from swift.common.ring import RingBuilder


def ring(dirname, name, port):
    b = RingBuilder(8, 1, 1)  # part_power 8, 1 replica, min_part_hours 1
    b.add_dev({"id": 0, "region": 1, "zone": 1, "ip": "127.0.0.1", "port": port,
               "device": "d0", "weight": 100.0, "meta": ""})
    b.rebalance()
    b.get_ring().save(os.path.join(dirname, name + ".ring.gz"))


def make_bucket(name, proxy_url):
    import ssl
    import urllib.request
    ctx = ssl._create_unverified_context()
    req = urllib.request.Request(proxy_url + "/auth/v1.0",
                                 headers={"X-Auth-User": "test:tester", "X-Auth-Key": "testing"})
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        url, token = r.headers["X-Storage-Url"], r.headers["X-Auth-Token"]
    # The storage URL names the proxy as configured; keep our scheme/host/port.
    path = url.split("/v1/", 1)[1]
    req = urllib.request.Request(proxy_url + "/v1/" + path + "/" + name, method="PUT",
                                 headers={"X-Auth-Token": token, "Content-Length": "0"})
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        if r.status not in (201, 202):
            print("PUT container: HTTP %d" % r.status, file=sys.stderr)
            return 1
    return 0


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--make-bucket":
        p = argparse.ArgumentParser()
        p.add_argument("--make-bucket", required=True)
        p.add_argument("--proxy-url", required=True)
        a = p.parse_args()
        return make_bucket(a.make_bucket, a.proxy_url)
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--account-port", type=int, required=True)
    p.add_argument("--container-port", type=int, required=True)
    p.add_argument("--object-port", type=int, required=True)
    p.add_argument("--proxy-port", type=int, required=True)
    p.add_argument("--memcache-port", type=int, default=1)
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--cert")
    p.add_argument("--key")
    a = p.parse_args()

    d = os.path.abspath(a.dir)
    devices = os.path.join(d, "devices")
    os.makedirs(os.path.join(devices, "d0"), exist_ok=True)
    ring(d, "account", a.account_port)
    ring(d, "container", a.container_port)
    ring(d, "object", a.object_port)

    common = (
        "[DEFAULT]\nbind_ip = 127.0.0.1\nbind_port = {port}\nworkers = 0\n"
        "user = root\nswift_dir = " + d + "\ndevices = " + devices + "\n"
        "mount_check = false\nlog_level = INFO\n"
    )
    servers = {
        "account": ("account-server", "egg:swift#account", a.account_port),
        "container": ("container-server", "egg:swift#container", a.container_port),
        "object": ("object-server", "egg:swift#object", a.object_port),
    }
    for name, (app, egg, port) in servers.items():
        with open(os.path.join(d, name + "-server.conf"), "w") as f:
            f.write(common.format(port=port))
            f.write("\n[pipeline:main]\npipeline = %s\n\n[app:%s]\nuse = %s\n" % (app, app, egg))

    tls = ""
    if a.cert:
        tls = "cert_file = %s\nkey_file = %s\n" % (a.cert, a.key)
    with open(os.path.join(d, "proxy-server.conf"), "w") as f:
        f.write(common.format(port=a.proxy_port))
        f.write(tls)
        # cache: tempauth insists on it (a memcached is needed only for
        # Swift-API tokens, which --make-bucket uses); slo after
        # s3api, or multipart uploads are off; s3api's location must equal
        # the client's signing region.
        f.write("""
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:%d

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:s3api]
use = egg:swift#s3api
location = %s
min_segment_size = 5242880

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo
""" % (a.memcache_port, a.region))
    return 0


if __name__ == "__main__":
    sys.exit(main())
