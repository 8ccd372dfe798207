"""Generic actor runtime on Trio: actors, OTP supervisors, process actors, introspection.

Knows the transports layer and nothing of inference.
"""

from ._actor import Actor
from ._envelope import Envelope
from ._errors import (
    ActorCrashed,
    ActorError,
    ActorUnavailable,
    CallTimeout,
    MailboxFull,
    RemoteError,
    RestartIntensityExceeded,
    describe,
    is_cancellation,
)
from ._info import ActorInfo
from ._introspection import IntrospectionServer, fetch_snapshot
from ._process import ProcessActor, ProcessExited
from ._registry import ActorRef, Registry, registry
from ._supervisor import ChildSpec, RestartType, Strategy, Supervisor

__all__ = [
    "Actor",
    "ActorCrashed",
    "ActorError",
    "ActorInfo",
    "ActorRef",
    "ActorUnavailable",
    "CallTimeout",
    "ChildSpec",
    "Envelope",
    "IntrospectionServer",
    "MailboxFull",
    "ProcessActor",
    "ProcessExited",
    "Registry",
    "RemoteError",
    "RestartIntensityExceeded",
    "RestartType",
    "Strategy",
    "Supervisor",
    "describe",
    "fetch_snapshot",
    "is_cancellation",
    "registry",
]
