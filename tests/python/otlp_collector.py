"""An OpenTelemetry collector's trace intake, for helios-cli/tests/request_ids.rs.

It decodes what Helios servers export with OpenTelemetry's own generated classes (PyPI's
opentelemetry-proto), not with Helios's proto, so the test holds the servers to OTLP itself.
Each span it receives becomes one JSON line in SPANS_FILE; the port it listens on is written
to PORT_FILE once it is ready.

usage: otlp_collector.py PORT_FILE SPANS_FILE
"""

import json
import os
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


def plain(any_value):
    """An OTLP AnyValue as a JSON value."""
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def attributes(key_values):
    return {kv.key: plain(kv.value) for kv in key_values}


class Intake(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out):
        self.out = out
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        line = {
                            "resource": resource,
                            "scope": scope_spans.scope.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "name": span.name,
                            "kind": trace_pb2.Span.SpanKind.Name(span.kind),
                            "start": span.start_time_unix_nano,
                            "end": span.end_time_unix_nano,
                            "attributes": attributes(span.attributes),
                            "events": [event.name for event in span.events],
                            "status": trace_pb2.Status.StatusCode.Name(span.status.code),
                            "status_message": span.status.message,
                        }
                        self.out.write(json.dumps(line) + "\n")
            self.out.flush()
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    port_file, spans_file = sys.argv[1], sys.argv[2]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    with open(spans_file, "a", encoding="utf-8") as out:
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Intake(out), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        # Written whole, then renamed: the test never reads half a port number.
        with open(port_file + ".tmp", "w", encoding="utf-8") as f:
            f.write(str(port))
        os.rename(port_file + ".tmp", port_file)
        server.wait_for_termination()


if __name__ == "__main__":
    main()
