"""Sans-IO AMQP 0-9-1: the client handshake as a state machine (no sockets).

    >>> from hangproof.amqp import ClientHandshake
    >>> hs = ClientHandshake("guest", "guest", "/")
    >>> hs.initiate()
    b'AMQP\\x00\\x00\\t\\x01'

See :mod:`hangproof.amqp.handshake` for the events, states and limits.
"""

from hangproof.amqp.handshake import (
    FRAME_OVERHEAD,
    MAX_BUFFERED,
    MAX_FRAME_SIZE,
    PROTOCOL_HEADER,
    WAITING_STATES,
    ClientHandshake,
    CloseOkReceived,
    CloseReceived,
    Event,
    HeartbeatReceived,
    OpenOkReceived,
    PeerClosed,
    ProtocolError,
    ServerProtocolHeader,
    StartReceived,
    State,
    TuneReceived,
    default_client_properties,
    heartbeat_frame,
)

__all__ = [
    "FRAME_OVERHEAD",
    "MAX_BUFFERED",
    "MAX_FRAME_SIZE",
    "PROTOCOL_HEADER",
    "WAITING_STATES",
    "ClientHandshake",
    "CloseOkReceived",
    "CloseReceived",
    "Event",
    "HeartbeatReceived",
    "OpenOkReceived",
    "PeerClosed",
    "ProtocolError",
    "ServerProtocolHeader",
    "StartReceived",
    "State",
    "TuneReceived",
    "default_client_properties",
    "heartbeat_frame",
]
