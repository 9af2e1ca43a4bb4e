"""Wire contract v1: the one module that agent, hub and simulators all import.

Everything that crosses MQTT is defined here: topic names, the JSON envelope and its
validation, and the canonical machine state model. It has no dependencies beyond the
standard library so that it runs unchanged on a Raspberry Pi.
"""

from shopfloor.contract.envelope import (
    SCHEMA_VERSION,
    AckWatermark,
    AgentStatus,
    DataLoss,
    Envelope,
    RecordKind,
    ReplayRequest,
    decode_ack,
    decode_envelope,
    decode_replay,
    decode_status,
    encode_ack,
    encode_envelope,
    encode_replay,
    encode_status,
    parse_data_loss,
)
from shopfloor.contract.errors import ContractError, ShopfloorError
from shopfloor.contract.states import (
    PRODUCTIVE_DEFAULT,
    MachineState,
    Observation,
    next_state,
)
from shopfloor.contract.topics import (
    DEFAULT_ROOT,
    AgentTopics,
    Channel,
    TopicRef,
    hub_status_topic,
    parse_topic,
    validate_id,
)

__all__ = [
    "DEFAULT_ROOT",
    "PRODUCTIVE_DEFAULT",
    "SCHEMA_VERSION",
    "AckWatermark",
    "AgentStatus",
    "AgentTopics",
    "Channel",
    "ContractError",
    "DataLoss",
    "Envelope",
    "MachineState",
    "Observation",
    "RecordKind",
    "ReplayRequest",
    "ShopfloorError",
    "TopicRef",
    "decode_ack",
    "decode_envelope",
    "decode_replay",
    "decode_status",
    "encode_ack",
    "encode_envelope",
    "encode_replay",
    "encode_status",
    "hub_status_topic",
    "next_state",
    "parse_data_loss",
    "parse_topic",
    "validate_id",
]
