"""How a CAR job's spec becomes one replica's container request (the reconcile loop itself runs
against a real engine in tests/engine/test_mesh_car.py)."""

from __future__ import annotations

from pathlib import Path

from mesh._jobspec import CarJob
from mesh._jobspec_load import load_spec, parse_spec
from mesh._reconciler import PIDS_LIMIT, container_request
from mesh._runner_car import PortMapping

EXAMPLE = load_spec(Path(__file__).resolve().parents[2] / "examples" / "car-web.yaml")


def test_the_example_maps_to_a_limited_loopback_container_with_an_http_check() -> None:
    assert isinstance(EXAMPLE, CarJob)
    req = container_request(7, 1, EXAMPLE)
    assert (req.job_id, req.replica, req.image) == (7, 1, "localhost/deedmesh-busybox:1")
    assert req.command == ("httpd", "-f", "-v", "-p", "8080", "-h", "/www")
    assert (req.cpu_millis, req.memory_mb, req.pids_limit) == (250, 64, PIDS_LIMIT)
    assert req.ports == (PortMapping(8080, "tcp", None),)
    assert req.bind_address == "127.0.0.1"
    assert req.health is not None
    assert req.health.test[-1] == "http://127.0.0.1:8080/"
    assert (req.health.interval_s, req.health.timeout_s) == (5, 2)
    assert req.env == {"GREETING": "hello from deedmesh"}


def test_tcp_and_command_checks_and_an_exposed_port() -> None:
    base = """
kind: car
name: svc
replicas: 1
resources: {cpu_millis: 100, memory_mb: 32}
car: {image: "localhost/x:1"}
"""
    tcp = parse_spec(base + "health: {type: tcp, port: 9000}\nports: [{container: 9000, host: 19000, expose: true}]\n")
    assert isinstance(tcp, CarJob)
    req = container_request(1, 0, tcp)
    assert req.health is not None
    assert "nc -w 2 127.0.0.1 9000" in req.health.test[-1]
    assert (req.ports, req.bind_address) == ((PortMapping(9000, "tcp", 19000),), "0.0.0.0")
    cmd = parse_spec(base + "health: {type: command, argv: [test, -e, /ready]}\n")
    assert isinstance(cmd, CarJob)
    req = container_request(1, 0, cmd)
    assert req.health is not None
    assert req.health.test == ("CMD", "test", "-e", "/ready")
    assert req.command is None
