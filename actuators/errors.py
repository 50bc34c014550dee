"""Errors an actuator raises when it cannot do what a decision asks.

Generic across pools (Kubernetes, Modal): each names the target and what is wrong, so the
daemon can log it as is and an operator knows what to fix.
"""

from __future__ import annotations


class ActuatorError(Exception):
    """The pool could not be read or changed."""


class PermissionDenied(ActuatorError):
    """The credentials lack a permission the actuator needs (the message names it)."""


class TargetNotFound(ActuatorError):
    """The thing to scale (Deployment, Modal function) does not exist."""


class ConflictingAutoscaler(ActuatorError):
    """Another autoscaler (e.g. a HorizontalPodAutoscaler) already scales the target."""


class Unavailable(ActuatorError):
    """The control plane kept failing (5xx, throttling, timeouts) after bounded retries."""


class AuthenticationFailed(ActuatorError):
    """The control plane rejected the credentials (missing, invalid or expired token)."""
