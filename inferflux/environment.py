"""The environment a worker process starts with: what it needs, none of the server's secrets.

A child inherits its parent's whole environment by default, and whoever can read
/proc/<pid>/environ of the child (its user, root, a crash reporter, a core dump) reads it
there. The server's environment may hold the policy store's passphrase
(INFERFLUX_POLICY_KEY, removed from the server's own environment once read) and
credentials of whatever else runs next to it (cloud keys, API tokens) that a model worker
never needs. So a worker gets an allowlist, not a copy: the locale, paths and Python
settings it runs with, the knobs of llama.cpp and its GPU and BLAS back ends, and
INFERFLUX_* settings; and even from those, nothing whose name says it is a secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Variables a worker may see, by exact name or by prefix.
NAMES = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
     "VIRTUAL_ENV", "RUST_BACKTRACE"}
)  # fmt: skip
PREFIXES = (
    "LC_", "PYTHON", "LD_", "XDG_", "INFERFLUX_",
    "GGML_", "LLAMA_", "CUDA_", "NVIDIA_", "HIP_", "ROCR_", "HSA_", "VK_",
    "OMP_", "KMP_", "OPENBLAS_", "MKL_", "COV_CORE_", "COVERAGE_",
)  # fmt: skip
# Never passed on, even under an allowed prefix (INFERFLUX_POLICY_KEY, LLAMA_API_KEY...).
SECRET = re.compile(r"KEY|SECRET|TOKEN|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of `environ` a worker process is started with."""
    return {
        name: value
        for name, value in environ.items()
        if (name in NAMES or name.startswith(PREFIXES)) and not SECRET.search(name)
    }
