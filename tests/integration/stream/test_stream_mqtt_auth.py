"""The broker takes only known clients, each on its own topics (edgeloop.local.stack's Mosquitto
config), and the stream publisher brings credentials and TLS."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edgeloop.local.stack import write_mosquitto_config
from edgeloop.stream.publisher import MqttPublisher, MqttTls
from edgeloop.testing.waits import wait_until

PREFIX = "edgeloop/results"
PUBLISHER = ("edgeloop-stream", "publisher-password")
AUDITOR = ("auditor", "auditor-password")  # reads everything, to see what the broker let through


def _configure(b, tls: tuple[Path, Path] | None = None):
    write_mosquitto_config(
        b.dir,
        "127.0.0.1",
        b.port,
        users=dict([PUBLISHER, AUDITOR]),
        acl={PUBLISHER[0]: [("write", f"{PREFIX}/#")], AUDITOR[0]: [("read", "#")]},
        persistence=False,
        tls_cert=tls[0] if tls else None,
        tls_key=tls[1] if tls else None,
    )
    b.start()
    return b


@pytest.fixture
def auth_broker(make_broker):
    return _configure(make_broker())


def _connack(port: int, credentials: tuple[str, str] | None) -> str:
    """The broker's answer to a CONNECT: 'Success' or the refusal's reason."""
    import paho.mqtt.client as mqtt

    answer: list[str] = []
    done = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    if credentials:
        c.username_pw_set(*credentials)
    c.on_connect = lambda client, u, f, rc, p: (answer.append(str(rc)), done.set())
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        assert done.wait(10), f"no CONNACK from the broker at 127.0.0.1:{port} within 10 s"
    finally:
        c.disconnect()
        c.loop_stop()
    return answer[0]


def _publisher(broker, tmp_path: Path, credentials=None, tls=None) -> MqttPublisher:
    user, password = credentials or (None, None)
    pub = MqttPublisher(
        "127.0.0.1", broker.port, tmp_path / "outbox", username=user, password=password, tls=tls
    )
    pub.start()
    return pub


def test_anonymous_and_wrong_password_clients_are_refused(auth_broker):
    assert _connack(auth_broker.port, None) == "Not authorized"
    assert _connack(auth_broker.port, (PUBLISHER[0], "wrong")) == "Not authorized"
    assert _connack(auth_broker.port, PUBLISHER) == "Success"


def test_a_publisher_without_credentials_delivers_nothing_and_keeps_its_results(
    auth_broker, subscribe, tmp_path
):
    sub = subscribe("127.0.0.1", auth_broker.port, "#", credentials=AUDITOR)
    pub = _publisher(auth_broker, tmp_path)
    try:
        wait_until(
            lambda: pub.refused is not None,
            10,
            f"the broker at 127.0.0.1:{auth_broker.port} to answer an anonymous publisher's CONNECT",
        )
        assert pub.refused == "Not authorized" and not pub.connected
        pub.submit("cam", f"{PREFIX}/line1/cam", b'{"n": 1}')
    finally:
        pub.close(flush_timeout_s=0.5)
    assert pub.outbox_depth == 1  # kept for a run with credentials
    assert sub.messages == []


def test_the_publisher_may_write_only_under_its_prefix(auth_broker, subscribe, tmp_path):
    sub = subscribe("127.0.0.1", auth_broker.port, "#", credentials=AUDITOR)
    pub = _publisher(auth_broker, tmp_path, PUBLISHER)
    try:
        assert pub.wait_connected(10), f"no connection to the broker at 127.0.0.1:{auth_broker.port} in 10 s"
        pub.submit("cam", "elsewhere/line1/cam", b'{"n": 0}')  # dropped by the broker's ACL
        pub.submit("cam", f"{PREFIX}/line1/cam", b'{"n": 1}')
        assert sub.wait_for(lambda s: len(s.messages) >= 1, what="the allowed result")
    finally:
        pub.close()
    # QoS 1 from one client arrives in order: had the first got through, it would be first
    assert [t for t, _ in sub.messages] == [f"{PREFIX}/line1/cam"]


def test_a_wildcard_topic_is_refused_in_the_callers_thread(auth_broker, tmp_path):
    pub = _publisher(auth_broker, tmp_path, PUBLISHER)
    try:
        with pytest.raises(ValueError, match="wildcard"):
            pub.submit("cam", f"{PREFIX}/line+1/cam", b"{}")
        pub.submit("cam", f"{PREFIX}/line1/cam", b"{}")  # the publisher thread is still alive
    finally:
        pub.close()
    assert pub.outbox_depth == 0


def test_the_publisher_speaks_tls_to_a_tls_broker(make_broker, tmp_path, tls_pki):
    broker = _configure(make_broker(), tls=(tls_pki["server_cert"], tls_pki["server_key"]))
    pub = _publisher(broker, tmp_path, PUBLISHER, tls=MqttTls(ca=tls_pki["ca"]))
    try:
        assert pub.wait_connected(10), f"no TLS connection to the broker at 127.0.0.1:{broker.port} in 10 s"
        pub.submit("cam", f"{PREFIX}/line1/cam", b'{"n": 1}')
    finally:
        pub.close()
    assert pub.outbox_depth == 0  # acknowledged by the broker over TLS
    plain = _publisher(broker, tmp_path / "plain", PUBLISHER)
    try:
        assert not plain.wait_connected(2)  # no clear-text listener
    finally:
        plain.close(flush_timeout_s=0.2)
