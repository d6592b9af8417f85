#!/usr/bin/env python3
"""Sends N InviteCustomer mutations (unique emails) to a shell, one after
another on one keep-alive connection, checking every answer. For profiling
the command path: run the shell under callgrind (or perf), send N and M
requests, and divide the difference of the counts by N - M.

    scripts/invite_load.py http://127.0.0.1:8080 1000 [tag]
"""
import http.client
import json
import sys
import urllib.parse


def main():
    url = urllib.parse.urlparse(sys.argv[1])
    n = int(sys.argv[2])
    tag = sys.argv[3] if len(sys.argv) > 3 else "load"
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    failures = 0
    for i in range(n):
        query = 'mutation { InviteCustomer(email: "%s-%d@example.com") { id email invited } }' % (tag, i)
        conn.request("POST", "/", json.dumps({"query": query}), {"content-type": "application/json"})
        response = conn.getresponse()
        body = json.loads(response.read())
        if response.status != 200 or body.get("errors") or not body["data"]["InviteCustomer"]["invited"]:
            failures += 1
            if failures < 5:
                print("failed:", response.status, body, file=sys.stderr)
    print("%d requests, %d failed" % (n, failures), file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
