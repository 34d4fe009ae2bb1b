"""Protobuf messages of the v2 gRPC protocol -> the JSON the OIP HTTP endpoints answer with.

The HTTP endpoints call the same servicer as gRPC and render its responses here, so both
protocols say the same thing by construction. Triton's HTTP JSON uses the proto field names and
plain JSON numbers for 64-bit integers (protobuf's own JSON mapping writes them as strings, which
Triton's clients do not expect), every field with its default value, and enum value names.
"""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message


def message_json(message: Message) -> dict[str, Any]:
    """Every field of `message` (unset oneof members and unset sub-messages left out)."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {key: _value(value_field, item) for key, item in value.items()}
        elif field.is_repeated:
            out[field.name] = [_value(field, item) for item in value]
        elif field.has_presence and not message.HasField(field.name):
            continue
        else:
            out[field.name] = _value(field, value)
    return out


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_json(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    return value
