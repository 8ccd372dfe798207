"""Generic actor runtime on Trio: actors, OTP supervisors, process actors, introspection.

Knows the transports layer and nothing of inference.
"""

from ._actor import Actor
from ._cluster import JoinFailed, Node
from ._envelope import Envelope
from ._errors import (
    ActorCrashed,
    ActorError,
    ActorUnavailable,
    CallTimeout,
    InjectedCrash,
    MailboxFull,
    Rejected,
    RemoteError,
    RestartIntensityExceeded,
    describe,
    is_cancellation,
)
from ._info import ActorInfo
from ._introspection import IntrospectionServer, chaos_control, fetch_snapshot, send_command
from ._monitor import ActorMonitor
from ._node import NodeDown, NodeLink
from ._process import ProcessActor, ProcessExited
from ._registry import ActorRef, Registry, registry
from ._supervisor import ChildSpec, RestartType, Strategy, Supervisor

__all__ = [
    "Actor",
    "ActorCrashed",
    "ActorError",
    "ActorInfo",
    "ActorMonitor",
    "ActorRef",
    "ActorUnavailable",
    "CallTimeout",
    "ChildSpec",
    "Envelope",
    "InjectedCrash",
    "IntrospectionServer",
    "JoinFailed",
    "MailboxFull",
    "Node",
    "NodeDown",
    "NodeLink",
    "ProcessActor",
    "ProcessExited",
    "Registry",
    "Rejected",
    "RemoteError",
    "RestartIntensityExceeded",
    "RestartType",
    "Strategy",
    "Supervisor",
    "chaos_control",
    "describe",
    "fetch_snapshot",
    "is_cancellation",
    "registry",
    "send_command",
]
