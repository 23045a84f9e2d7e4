#!/usr/bin/env python3
"""The client team's server sketch (shared/spec/client-request.md), made runnable.

A baseline for the benchmarks in bench/run.sh: Python `websockets` plus their SessionManager,
kept as close to the sketch as possible:

- session_start: a new id `session_` + uuid4().hex[:12]; an active session of the same device is
  ended first (auto-end); the session is registered with device_id, start_time, data_count = 0;
  the reply is `session_created`.
- session_end: the session gets its end_time and status "completed", leaves the active sessions;
  the reply is `session_ended`.
- device_register -> device_registered (the existing flow; no sessionId for v1.1 clients).
- sensor data is counted per session.

Added only so that `amr-loadgen` can drive it and check what it measures: `session_ended` carries
reason/startedAt/endedAt/dataCount (the wire contract's fields), `sensor_batch` counts its samples,
data without an active session gets an error, a closed connection ends its device's session
(their "abnormal end" checklist item), and `ping` is answered. There is no persistence, no
broker, no acks (`seq` is ignored), no validation beyond what the sketch implies: it is an
in-memory, single-process, single-threaded server.

Listens on 127.0.0.1 only by default. Python 3.9+, websockets >= 13 (asyncio implementation).
"""

import argparse
import asyncio
import json
import signal
import time
import uuid

from websockets.asyncio.server import serve


def now_ms():
    return int(time.time() * 1000)


class SessionManager:
    """Their sketch: sessions by id, the active session of each device."""

    def __init__(self):
        self.sessions = {}  # session_id -> session dict
        self.active_sessions = {}  # device_id -> session_id

    def start_session(self, device_id):
        replaced = None
        if device_id in self.active_sessions:
            replaced = self.active_sessions[device_id]
            self.end_session(replaced, reason="replaced")
        session_id = f"session_{uuid.uuid4().hex[:12]}"
        self.sessions[session_id] = {
            "session_id": session_id,
            "device_id": device_id,
            "start_time": now_ms(),
            "end_time": None,
            "data_count": 0,
            "status": "active",
            "reason": None,
        }
        self.active_sessions[device_id] = session_id
        return session_id, replaced

    def end_session(self, session_id, reason="client_request"):
        session = self.sessions.get(session_id)
        if session is None:
            return None
        if session["status"] == "active":
            session["end_time"] = now_ms()
            session["status"] = "completed"
            session["reason"] = reason
            if self.active_sessions.get(session["device_id"]) == session_id:
                del self.active_sessions[session["device_id"]]
        return session

    def add_data(self, device_id, session_id, samples):
        """Counts data into the device's active session; returns an error code or None."""
        active = self.active_sessions.get(device_id)
        if session_id is None:
            session_id = active
            if session_id is None:
                return "NO_ACTIVE_SESSION"
        if session_id != active:
            return "SESSION_NOT_ACTIVE"
        self.sessions[session_id]["data_count"] += samples
        return None


def session_ended(session):
    return {
        "type": "session_ended",
        "sessionId": session["session_id"],
        "deviceId": session["device_id"],
        "timestamp": now_ms(),
        "reason": session["reason"],
        "startedAt": session["start_time"],
        "endedAt": session["end_time"],
        "dataCount": session["data_count"],
    }


def error(code, message, **extra):
    reply = {"type": "error", "errorCode": code, "message": message}
    reply.update({k: v for k, v in extra.items() if v is not None})
    return reply


class Server:
    def __init__(self):
        self.manager = SessionManager()

    async def handler(self, websocket):
        device_id = None
        try:
            async for raw in websocket:
                reply = self.handle(raw, device_id)
                if isinstance(reply, tuple):
                    device_id, reply = reply
                if reply is not None:
                    await websocket.send(json.dumps(reply, separators=(",", ":")))
        except Exception:  # a broken connection ends like a closed one
            pass
        finally:
            if device_id is not None:
                active = self.manager.active_sessions.get(device_id)
                if active is not None:
                    self.manager.end_session(active, reason="disconnected")

    def handle(self, raw, device_id):
        if isinstance(raw, bytes):
            return error("INVALID_MESSAGE", "binary frames are not accepted")
        try:
            msg = json.loads(raw)
        except ValueError:
            return error("INVALID_MESSAGE", "not JSON")
        if not isinstance(msg, dict):
            return error("INVALID_MESSAGE", "not a JSON object")
        kind = msg.get("type")
        dev = msg.get("deviceId") or device_id

        if kind == "sensor_data" or kind == "sensor_batch":
            if dev is None:
                return error("NOT_REGISTERED", "register first")
            samples = 1
            if kind == "sensor_batch":
                samples = len(msg.get("samples") or [])
            code = self.manager.add_data(dev, msg.get("sessionId"), samples)
            if code is not None:
                return error(code, "data refused", deviceId=dev, sessionId=msg.get("sessionId"), ref=kind)
            return None
        if kind == "device_register":
            if not isinstance(dev, str) or not dev:
                return error("INVALID_DEVICE_ID", "deviceId required", ref=kind)
            return dev, {"type": "device_registered", "deviceId": dev, "timestamp": now_ms()}
        if kind == "session_start":
            if dev is None:
                return error("NOT_REGISTERED", "register first", ref=kind)
            session_id, replaced = self.manager.start_session(dev)
            reply = {"type": "session_created", "sessionId": session_id, "deviceId": dev,
                     "timestamp": now_ms()}
            if replaced is not None:
                reply["replacedSessionId"] = replaced
            return reply
        if kind == "session_end":
            if dev is None:
                return error("NOT_REGISTERED", "register first", ref=kind)
            session_id = msg.get("sessionId") or self.manager.active_sessions.get(dev)
            if session_id is None:
                return error("NO_ACTIVE_SESSION", "no active session", deviceId=dev, ref=kind)
            session = self.manager.sessions.get(session_id)
            if session is None or session["device_id"] != dev:
                return error("SESSION_NOT_FOUND", "unknown session", deviceId=dev,
                             sessionId=session_id, ref=kind)
            return session_ended(self.manager.end_session(session_id))
        if kind == "ping":
            return {"type": "pong", "timestamp": now_ms()}
        return error("UNKNOWN_TYPE", f"unknown message type {kind!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--path", default="/ws")
    args = parser.parse_args()
    server = Server()

    def only_path(connection, request):
        if request.path.split("?", 1)[0] != args.path:
            return connection.respond(404, "not found\n")
        return None

    async def run():
        loop = asyncio.get_running_loop()
        stop = loop.create_future()

        def on_signal():
            if not stop.done():
                stop.set_result(None)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        async with serve(server.handler, args.host, args.port, process_request=only_path,
                         max_size=64 * 1024):
            print(f"baseline_python: listening on ws://{args.host}:{args.port}{args.path}",
                  flush=True)
            await stop

    asyncio.run(run())


if __name__ == "__main__":
    main()
