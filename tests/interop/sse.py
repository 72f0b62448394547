"""Publishes and reads events over pubsub serve's plain HTTP with nothing but Python's standard library,
following docs/PROTOCOL.md ("HTTP"). Usage: sse.py BASE_URL TOPIC TOKEN N, where the topic already
holds messages m1..mN. Prints OK, or what went wrong (and exits 1)."""

import http.client
import json
import sys
import urllib.parse
import urllib.request


def fail(why):
    print(why)
    sys.exit(1)


def main():
    base, topic, token, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    # Publish with urllib: the body is the payload, X-From becomes a message header.
    req = urllib.request.Request(
        f"{base}/topics/{topic}?key=py",
        data="from python \u00e9".encode(),
        headers={"Authorization": f"Bearer {token}", "X-From": "python"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        receipt = json.load(resp)
        if resp.status != 200 or receipt.get("seq") != n + 1:
            fail(f"publish answered {resp.status}: {receipt}")

    # A wrong token is a 401 with a JSON error.
    try:
        urllib.request.urlopen(f"{base}/subscriptions/x?token=wrong", timeout=10)
        fail("a wrong token was accepted")
    except urllib.error.HTTPError as e:
        body = json.load(e)
        if e.code != 401 or body.get("code") != 1005:
            fail(f"wrong token answered {e.code}: {body}")

    # Read the events with http.client, resuming after id 0 (so from the first message), the token in
    # the query as a browser's EventSource would send it.
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("GET", f"/topics/{topic}/events?token={token}", headers={"Last-Event-ID": "0"})
    resp = conn.getresponse()
    if resp.status != 200 or resp.getheader("Content-Type") != "text/event-stream":
        fail(f"events answered {resp.status} {resp.getheader('Content-Type')}")
    seen = []
    event_id, data = None, []
    while len(seen) < n + 1:
        line = resp.readline()
        if not line:
            fail(f"the stream ended after {seen}")
        line = line.decode().rstrip("\n")
        if line.startswith(":"):
            continue
        if line == "":
            if data:
                seen.append((event_id, json.loads("\n".join(data))))
            event_id, data = None, []
        elif line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            data.append(line[6:])
    conn.close()

    ids = [int(i) for i, _ in seen]
    if ids != list(range(1, n + 2)):
        fail(f"ids {ids}")
    payloads = [e["payload"] for _, e in seen]
    if payloads != [f"m{i}" for i in range(1, n + 1)] + ["from python \u00e9"]:
        fail(f"payloads {payloads}")
    last = seen[-1][1]
    if last.get("key") != "py" or last.get("headers", {}).get("x-from") != "python":
        fail(f"last event {last}")
    print("OK")


if __name__ == "__main__":
    main()
