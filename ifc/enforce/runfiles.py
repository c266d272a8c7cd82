"""What the egress hook leaves in the run directory for whoever starts the sandbox.

* `RUN_DIR/ca.pem` — the run CA's certificate (PEM; never its key, which stays in the hook's memory). The
  sandbox must trust it — and only the sandbox: the microVM adds it to the guest's trust store, a bare
  process gets `curl --cacert`, `SSL_CERT_FILE` or `REQUESTS_CA_BUNDLE`. Without it a client refuses the
  terminated tunnels to the endpoints secrets are bound to, and the hook logs why.
* `RUN_DIR/sandbox.env` — one `NAME=value` line per variable, no quoting: each policy secret's name with
  its sentinel (the sandbox never gets the real value), then, from `ifc proxy`, the proxy settings
  (`HTTP_PROXY`, `HTTPS_PROXY` and lower case) for its listening address. `ifc mount --egress` writes the
  sentinels only: its guest reaches the hook through a forward at an address of its own.

`ifc proxy` and `ifc mount --egress` both write them through `write_sandbox_files`, with these names and
this format, which the microVM launcher reads.
"""

from __future__ import annotations

import os
from pathlib import Path

from ifc.enforce.secrets import Vault
from ifc.enforce.tls import RunCA

CA_FILE = "ca.pem"
ENV_FILE = "sandbox.env"


def write_sandbox_files(run_dir: Path, vault: Vault, ca: RunCA, proxy_url: str | None = None) -> None:
    """Write `ca.pem` and `sandbox.env` (each replaced whole, so a reader never sees half a file)."""
    lines = [f"{name}={sentinel}" for name, sentinel in vault.sandbox_env().items()]
    if proxy_url:
        lines += [f"{name}={proxy_url}" for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")]
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, data in ((CA_FILE, ca.pem), (ENV_FILE, "".join(line + "\n" for line in lines).encode())):
        partial = run_dir / f".{name}.tmp"
        partial.write_bytes(data)
        os.replace(partial, run_dir / name)
