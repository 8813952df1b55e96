"""An MQTT subscriber for tests: collects JSON results on a persistent session (nothing lost across a
broker restart that keeps its sessions) and deduplicates them the way a consumer should."""

from __future__ import annotations

import json
import threading

from edgeloop.testing.waits import wait_until


class Subscriber:
    """Collects JSON results; a persistent session (clean_session=False) so a broker restart loses nothing."""

    def __init__(
        self,
        host: str,
        port: int,
        topic: str,
        client_id: str,
        credentials: tuple[str, str] | None = None,
    ):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.topic = topic
        self.broker = f"{host}:{port}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(1, 2)
        if credentials:
            self.client.username_pw_set(*credentials)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        assert self._subscribed.wait(10), f"no SUBACK within 10 s for MQTT topic {topic} at {self.broker}"

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append((msg.topic, json.loads(msg.payload)))

    def by_camera(self) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        with self._lock:
            for _, m in self.messages:
                out.setdefault(m["camera"], []).append(m)
        return out

    def unique_frames(self, camera: str) -> list[int]:
        """Frame indices of ``camera`` in arrival order with QoS 1 duplicates removed."""
        seen: set[int] = set()
        out = []
        for m in self.by_camera().get(camera, []):
            if m["frame_index"] not in seen:
                seen.add(m["frame_index"])
                out.append(m["frame_index"])
        return out

    def wait_for(self, predicate, timeout: float = 15.0, what: str = "the expected results") -> bool:
        """True once ``predicate(self)`` holds; an AssertionError naming the topic after ``timeout``."""
        wait_until(
            lambda: predicate(self),
            timeout,
            lambda: f"{what} on MQTT topic {self.topic} at {self.broker} ({len(self.messages)} messages so far)",
        )
        return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def unique_ids(self) -> dict[str, dict]:
        """Results by ``message_id``: what a consumer keeps after dropping at-least-once duplicates."""
        with self._lock:
            return {m["message_id"]: m for _, m in self.messages if "message_id" in m}
