#!/usr/bin/env python3
"""An OTLP metrics receiver that is not our code, for the export tests.

Built only on the official OpenTelemetry protobuf definitions (PyPI opentelemetry-proto) and
grpcio. Serves OTLP/gRPC (MetricsService.Export) and OTLP/HTTP protobuf (POST /v1/metrics),
and appends every decoded request to --out as one JSON line:
  {"transport": "grpc"|"http", "headers": {...}, "request": <protobuf JSON mapping>}
Prints "listening grpc=<port> http=<port>" once both are up. Runs until killed.
"""
import argparse
import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as pb_grpc

LOCK = threading.Lock()


def record(out, transport, headers, request):
    line = json.dumps({
        "transport": transport,
        "headers": {k.lower(): v for k, v in headers.items()},
        "request": MessageToDict(request),
    })
    with LOCK, open(out, "a") as f:
        f.write(line + "\n")


class Metrics(pb_grpc.MetricsServiceServicer):
    def __init__(self, out):
        self.out = out

    def Export(self, request, context):
        record(self.out, "grpc", dict(context.invocation_metadata()), request)
        return pb.ExportMetricsServiceResponse()


def http_handler(out):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path != "/v1/metrics":
                self.send_error(404)
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            request = pb.ExportMetricsServiceRequest()
            try:
                request.ParseFromString(body)
            except Exception as e:  # a decoding failure is a test failure: say so loudly
                print(f"undecodable request: {e}", file=sys.stderr, flush=True)
                self.send_error(400)
                return
            record(out, "http", dict(self.headers.items()), request)
            payload = pb.ExportMetricsServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    return Handler


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_MetricsServiceServicer_to_server(Metrics(a.out), server)
    grpc_port = server.add_insecure_port(f"127.0.0.1:{a.grpc_port}")
    server.start()
    http = ThreadingHTTPServer(("127.0.0.1", a.http_port), http_handler(a.out))
    threading.Thread(target=http.serve_forever, daemon=True).start()
    print(f"listening grpc={grpc_port} http={http.server_address[1]}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
