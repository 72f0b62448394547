"""A pubsub protocol client written from docs/PROTOCOL.md alone, used by the interoperability test.

Usage: python3 client.py ws://127.0.0.1:PORT
Publishes, subscribes durably, receives, acks and checks the subscription's ack floor; prints "OK" on
success and exits non-zero with a reason otherwise.
"""

import asyncio
import base64
import json
import sys

import websockets


class Client:
    def __init__(self, ws):
        self.ws = ws
        self.next_id = 1
        self.pushed = []  # deliver / lagged / closed frames seen while waiting for answers

    async def call(self, op, **fields):
        request_id = self.next_id
        self.next_id += 1
        await self.ws.send(json.dumps({"op": op, "id": request_id, **fields}))
        while True:
            frame = json.loads(await self.ws.recv())
            if frame.get("id") == request_id:
                if frame["op"] == "error":
                    raise RuntimeError(f"{op} failed: {frame['code']} {frame['message']}")
                return frame.get("result")
            self.pushed.append(frame)

    async def next_pushed(self):
        if self.pushed:
            return self.pushed.pop(0)
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout=5))


async def main(url):
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"op": "hello", "id": 0, "version": 1, "client": "interop.py"}))
        welcome = json.loads(await ws.recv())
        assert welcome["op"] == "welcome" and welcome["version"] == 1, welcome
        client = Client(ws)

        sid = (await client.call(
            "subscribe", patterns=["interop"], subscription="py-workers", ack="explicit", prefetch=10,
        ))["sid"]
        receipt = await client.call(
            "publish", message={"subject": "interop", "payload": "hello from python", "headers": {"lang": "py"}},
        )
        assert receipt["seq"] == 1, receipt
        binary = bytes([0, 255, 7])
        await client.call("publish", message={
            "subject": "interop", "payload": base64.b64encode(binary).decode(), "payload_encoding": "base64",
        })

        received = []
        while len(received) < 2:
            frame = await client.next_pushed()
            assert frame["op"] == "deliver" and frame["sid"] == sid, frame
            for message in frame["messages"]:
                received.append(message)
                await client.call("ack", subscription=frame["subscription"], seq=message["seq"],
                                  lease=message["lease"])

        assert received[0]["payload"] == "hello from python", received[0]
        assert received[0]["headers"] == {"lang": "py"}, received[0]
        assert received[0]["attempt"] == 1, received[0]
        assert received[1]["payload_encoding"] == "base64", received[1]
        assert base64.b64decode(received[1]["payload"]) == binary, received[1]

        info = await client.call("subscription_info", subscription="py-workers")
        assert info["ack_floor"] == 2 and info["in_flight"] == 0, info
        try:
            await client.call("teleport")
            raise AssertionError("unknown op accepted")
        except RuntimeError as e:
            assert "1001" in str(e), e
    print("OK")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
