"""Print a generated protobuf module's wire contract as JSON (run as a script, one module per process).

Used to compare ninefold's Open Inference Protocol modules with the ones tritonclient ships: the
two define the same `inference.*` symbols and cannot be imported into one process.
Usage: python describe_proto.py MODULE  (e.g. protos.inference.grpc_service_pb2)
"""

from __future__ import annotations

import importlib
import json
import sys

from google.protobuf import descriptor_pb2


def _messages(messages, prefix: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for message in messages:
        name = prefix + message.name
        out[name] = sorted(
            [
                field.name,
                field.number,
                field.type,
                field.label,
                field.type_name,
                message.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else "",
            ]
            for field in message.field
        )
        out.update(_messages(message.nested_type, name + "."))
    return out


def describe(module_name: str) -> dict:
    """Package, every message's fields (name, number, type, label, type name, oneof), every RPC."""
    proto = descriptor_pb2.FileDescriptorProto()
    importlib.import_module(module_name).DESCRIPTOR.CopyToProto(proto)
    return {
        "package": proto.package,
        "enums": {enum.name: sorted([v.name, v.number] for v in enum.value) for enum in proto.enum_type},
        "messages": _messages(proto.message_type, ""),
        "services": {
            service.name: sorted(
                [m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming] for m in service.method
            )
            for service in proto.service
        },
    }


if __name__ == "__main__":
    json.dump(describe(sys.argv[1]), sys.stdout, sort_keys=True)
