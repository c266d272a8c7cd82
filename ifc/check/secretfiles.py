"""What `secret NAME from file "WORKSPACE/PATH" key "K"` needs to mean anything: the file must be one the mount
serves with sentinels (labelled `secret`, of a recognised format), or the sandbox reads its real value and the
binding protects nothing."""

from __future__ import annotations

from ifc.diagnostics import Diagnostic, error
from ifc.lang import ast
from ifc.policy.model import SENTINEL_TAG

from . import CheckContext


def workspace_bindings(ctx: CheckContext) -> list[Diagnostic]:
    policy = ctx.policy
    out = []
    refs = {item.name.text: item.ref.span for f in ctx.files for item in f.items if isinstance(item, ast.SecretDecl)}
    for secret in policy.secrets_:
        if not secret.workspace_file or secret.key is None:
            continue
        if not policy.sentinel_file(secret.ref):
            label = policy.lattice.describe(policy.file_label(secret.ref).label)
            out.append(error("secret-file-label", f"secret `{secret.name}` is a value of `{secret.ref}`, which is "
                             f"labelled `{label}`, not `{SENTINEL_TAG}`: the sandbox reads its real values",
                             refs.get(secret.name, secret.span),
                             help=f'label it: `files {{ "{secret.ref}" {SENTINEL_TAG} }}`'))
    return out
