"""The run's secrets, loaded so that one that cannot be loaded costs only the sends that need it.

A policy names secrets the sandbox may use (`secret K from env "K" to ...`). When one has no value at the
start of a run (its variable unset, its file unreadable, its command failing), refusing the whole run makes
an agent that never touches that API unusable, while starting without it must not let anything
pretend to be it. So the sandbox still gets a sentinel for it (its environment is what it expects), the hook
holds a random stand-in that matches nothing real, and `Egress.check_secrets` refuses every send carrying
that sentinel, saying the secret had no value (`unset`). Nothing is ever swapped in for it.
"""

from __future__ import annotations

import secrets as _random
from dataclasses import dataclass, field

from ifc.enforce.secrets import SecretError, Vault, load_value


@dataclass(frozen=True)
class LoadedVault:
    vault: Vault
    unset: dict[str, str] = field(default_factory=dict)  # secret name -> why it has no value

    def notices(self) -> list[str]:
        """One line per secret without a value, for the person starting the run."""
        return [f"secret `{name}` has no value ({why}): the sandbox gets its sentinel, and every send that needs "
                "it is refused" for name, why in sorted(self.unset.items())]


def load_vault(policy, files=None) -> LoadedVault:
    """Each secret's real value, or, for one that cannot be loaded, a random stand-in recorded as `unset`.
    Values from workspace files come with `files` (the mount's `ifc.secretfiles.SecretFiles`, loaded)."""
    values: dict[str, bytes] = {}
    unset: dict[str, str] = {}
    for secret in policy.secrets_:
        if secret.workspace_file:
            continue
        try:
            values[secret.name] = load_value(secret.source, secret.ref, secret.name, secret.key)
        except SecretError as exc:
            unset[secret.name] = exc.problem
            values[secret.name] = _random.token_hex(32).encode()  # never swapped: check_secrets refuses first
    return LoadedVault(Vault.from_policy(policy, values=values, files=files), unset)
