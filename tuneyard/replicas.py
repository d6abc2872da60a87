"""Inference replica addresses. One setting names the replicas of the inference service:

- `host:port`: one replica (gRPC resolves the name itself, as for any channel);
- `a:1,b:2`: a fixed list (tests, docker compose);
- `dns:///name:port`: every IP the name resolves to, one replica each (a Kubernetes
  headless Service gives one IP per pod), resolved again on `refresh()` so that pods
  coming and going are followed.
"""

import ipaddress
import logging
import socket

log = logging.getLogger(__name__)

DNS_SCHEME = "dns:///"


def split_host_port(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` into its parts; ValueError saying what is wrong."""
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"replica address {address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"replica address {address!r}: write an IPv6 host as [host]:port")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"replica address {address!r}: port must be a number in 1..65535")
    if not host or any(c.isspace() or c in "/[]," for c in host):
        raise ValueError(f"replica address {address!r}: bad host {host!r}")
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ReplicaAddresses:
    """The replicas one address setting names. `current` is the last known set: fixed for
    `host:port` and comma lists, refreshed from DNS by `refresh()` for `dns:///`."""

    def __init__(self, spec: str):
        spec = spec.strip()
        if not spec:
            raise ValueError("no replica address given")
        self.spec = spec
        self.dns_name: tuple[str, int] | None = None
        if spec.startswith("dns:"):
            if not spec.startswith(DNS_SCHEME):
                raise ValueError(
                    f"replica address {spec!r}: write dns:///name:port (no DNS authority)"
                )
            self.dns_name = split_host_port(spec.removeprefix(DNS_SCHEME))
            self.current: list[str] = []
        else:
            parts = [part.strip() for part in spec.split(",")]
            if not all(parts):
                raise ValueError(f"replica address list {spec!r} has an empty entry")
            for part in parts:
                split_host_port(part)
            self.current = list(dict.fromkeys(parts))

    @property
    def dynamic(self) -> bool:
        """True when the set can change (a `dns:///` name)."""
        return self.dns_name is not None

    def resolve(self) -> list[str]:
        """The name's addresses now, one per distinct IP, sorted; OSError when it fails."""
        host, port = self.dns_name
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        ips = {info[4][0] for info in infos}
        ordered = sorted(ips, key=lambda ip: ipaddress.ip_address(ip.split("%")[0]))
        return [join_host_port(ip, port) for ip in ordered]

    def refresh(self) -> list[str]:
        """Resolve again (`dns:///` only). A failure, or a name with no address, keeps the
        last known set: a DNS hiccup must not take every replica away."""
        if self.dns_name is None:
            return self.current
        try:
            resolved = self.resolve()
        except OSError as err:
            log.warning("cannot resolve %s (keeping %s): %s", self.spec, self.current, err)
            return self.current
        if resolved != self.current:
            log.info("replicas of %s: %s", self.spec, ", ".join(resolved))
            self.current = resolved
        return self.current
