// The gRPC test server of tests/tests/grpc.rs, built from the real grpc-go module at several
// versions (tests/go/grpc/build.sh). No generated code: the service is described by hand and
// its messages are the well-known wrapperspb.StringValue, so one source builds against every
// grpc-go version.
//
// Service grpctest.Echo:
//   - Say (unary): "ok" answers OK; "code:N" fails with status code N; "deadline" waits for the
//     RPC's own deadline and then fails with DEADLINE_EXCEEDED (written by the server whether or
//     not the client's cancellation arrived first, so the code the server writes is known).
//   - Stream (server streaming): "n:K" sends K messages; "n:K:code:N" then fails with N;
//     "n:K:sleep:MS" pauses MS ms between messages (a call that outlives an attach).
//   - Collect (client streaming): receives until EOF; fails with N if a message is "code:N".
//
// Plus the standard health service (grpc.health.v1.Health) answering SERVING.
//
// -serve picks the transport: "grpc" (default) is grpc-go's own HTTP/2 server (Serve);
// "tls" and "h2c" mount the grpc.Server in a net/http server through (*grpc.Server).ServeHTTP,
// as services sharing one port between gRPC and REST do (a GET /rest answers plain text):
// "tls" over TLS with ALPN h2 and a self-signed certificate made at start, "h2c" over
// cleartext HTTP/2 with prior knowledge (net/http's own, Go >= 1.24; -serve-modes lists what
// this build can do).
//
// Prints "listening <addr>" on stdout once it accepts connections. With -print-offsets it
// instead calls itself once per transport and prints, as JSON, the struct offsets the
// collector's gRPC uprobes read, found by reflection on the real values inside a handler (the
// generator of collector/src/probes/go_grpc/offsets_table.json, `cargo xtask grpc-offsets`);
// a stream layout that differs between grpc-go's transport and net/http's is an error, since
// one row has to serve both.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"reflect"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

type echo interface{}

type server struct{}

// codeOf parses "code:N".
func codeOf(s string) (codes.Code, bool) {
	rest, ok := cutPrefix(s, "code:")
	if !ok {
		return codes.OK, false
	}
	n, err := strconv.Atoi(rest)
	if err != nil {
		return codes.Unknown, true
	}
	return codes.Code(n), true
}

func say(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
	in := new(wrapperspb.StringValue)
	if err := dec(in); err != nil {
		return nil, err
	}
	v := in.GetValue()
	if c, ok := codeOf(v); ok {
		return nil, status.Errorf(c, "asked for %v", c)
	}
	if v == "offsets" {
		return wrapperspb.String(offsets(ctx)), nil
	}
	if v == "deadline" {
		dl, ok := ctx.Deadline()
		if !ok {
			return nil, status.Error(codes.InvalidArgument, "no deadline")
		}
		time.Sleep(time.Until(dl) + 5*time.Millisecond)
		return nil, status.Error(codes.DeadlineExceeded, "deadline passed")
	}
	return wrapperspb.String("said " + v), nil
}

func stream(_ any, ss grpc.ServerStream) error {
	in := new(wrapperspb.StringValue)
	if err := ss.RecvMsg(in); err != nil {
		return err
	}
	parts := strings.SplitN(in.GetValue(), ":", 3)
	if len(parts) < 2 || parts[0] != "n" {
		return status.Error(codes.InvalidArgument, "want n:K")
	}
	k, err := strconv.Atoi(parts[1])
	if err != nil {
		return status.Error(codes.InvalidArgument, "want n:K")
	}
	var pause time.Duration
	if len(parts) == 3 {
		if ms, ok := cutPrefix(parts[2], "sleep:"); ok {
			n, err := strconv.Atoi(ms)
			if err != nil {
				return status.Error(codes.InvalidArgument, "want n:K:sleep:MS")
			}
			pause = time.Duration(n) * time.Millisecond
		}
	}
	for i := 0; i < k; i++ {
		if i > 0 {
			time.Sleep(pause)
		}
		if err := ss.SendMsg(wrapperspb.String(strconv.Itoa(i))); err != nil {
			return err
		}
	}
	if len(parts) == 3 {
		if c, ok := codeOf(parts[2]); ok {
			return status.Errorf(c, "stream asked for %v", c)
		}
	}
	return nil
}

func collect(_ any, ss grpc.ServerStream) error {
	n := 0
	fail := codes.OK
	for {
		in := new(wrapperspb.StringValue)
		err := ss.RecvMsg(in)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		n++
		if c, ok := codeOf(in.GetValue()); ok {
			fail = c
		}
	}
	if fail != codes.OK {
		return status.Errorf(fail, "collect asked for %v", fail)
	}
	return ss.SendMsg(wrapperspb.String(strconv.Itoa(n)))
}

// offsets: where the uprobes find the method in the server's stream and the code in a status.
func offsets(ctx context.Context) string {
	out := map[string]any{}
	st := grpc.ServerTransportStreamFromContext(ctx)
	t := reflect.TypeOf(st).Elem()
	out["stream_type"] = t.String()
	base := uintptr(0)
	out["stream_ptr"] = nil
	if f, ok := t.FieldByName("Stream"); ok && f.Anonymous {
		switch f.Type.Kind() {
		case reflect.Struct:
			// ServerStream embeds Stream by value (newest grpc-go).
			base = f.Offset
			t = f.Type
		case reflect.Ptr:
			// ServerStream embeds *Stream (grpc-go 1.69 to 1.7x): one pointer to follow.
			out["stream_ptr"] = f.Offset
			t = f.Type.Elem()
		}
	}
	m, ok := t.FieldByName("method")
	if !ok || m.Type.Kind() != reflect.String || len(m.Index) != 1 {
		return `{"error":"no method field"}`
	}
	out["stream_method"] = base + m.Offset
	stt := reflect.TypeOf(status.New(codes.OK, "")).Elem()
	s, ok := stt.FieldByName("s")
	if !ok || s.Type.Kind() != reflect.Ptr {
		return `{"error":"no status.s"}`
	}
	out["status_proto"] = s.Offset
	c, ok := s.Type.Elem().FieldByName("Code")
	if !ok || c.Type.Kind() != reflect.Int32 {
		return `{"error":"no Code"}`
	}
	out["proto_code"] = c.Offset
	if bi, ok := debug.ReadBuildInfo(); ok {
		// The build info has GoVersion only from Go 1.18 on; the same string.
		out["go"] = runtime.Version()
		for _, d := range bi.Deps {
			switch d.Path {
			case "google.golang.org/grpc":
				out["grpc"] = d.Version
			case "google.golang.org/genproto/googleapis/rpc":
				out["genproto_rpc"] = d.Version
			}
		}
	}
	b, _ := json.Marshal(out)
	return string(b)
}

var desc = grpc.ServiceDesc{
	ServiceName: "grpctest.Echo",
	HandlerType: (*echo)(nil),
	Methods:     []grpc.MethodDesc{{MethodName: "Say", Handler: say}},
	Streams: []grpc.StreamDesc{
		{StreamName: "Stream", Handler: stream, ServerStreams: true},
		{StreamName: "Collect", Handler: collect, ClientStreams: true},
	},
}

// selfSigned makes a certificate for 127.0.0.1 and localhost, valid for a day.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// shared routes gRPC (HTTP/2 with a gRPC content type) to the grpc.Server and the rest to a
// plain handler: one port for both, the way such services are usually written.
func shared(s *grpc.Server) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			s.ServeHTTP(w, r)
			return
		}
		fmt.Fprintln(w, "rest ok")
	})
}

// serve serves s on l with the transport named by mode (see -serve).
func serve(s *grpc.Server, l net.Listener, mode string) error {
	switch mode {
	case "grpc":
		return s.Serve(l)
	case "tls":
		cert, err := selfSigned()
		if err != nil {
			return err
		}
		hs := &http.Server{
			Handler:   shared(s),
			TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}},
		}
		return hs.ServeTLS(l, "", "")
	case "h2c":
		hs := &http.Server{Handler: shared(s)}
		if !cleartextHTTP2(hs) {
			return fmt.Errorf("h2c needs Go >= 1.24 (http.Server.Protocols)")
		}
		return hs.Serve(l)
	}
	return fmt.Errorf("unknown -serve %q", mode)
}

// modes: what -serve accepts in this build.
func modes() []string {
	m := []string{"grpc", "tls"}
	if cleartextHTTP2(&http.Server{}) {
		m = append(m, "h2c")
	}
	return m
}

// selfCall serves s on a fresh loopback listener with mode, calls Say("offsets") once and
// returns what the handler found.
func selfCall(s *grpc.Server, mode string) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go serve(s, l, mode)
	creds := insecure.NewCredentials()
	if mode == "tls" {
		creds = credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})
	}
	conn, err := dial(l.Addr().String(), grpc.WithTransportCredentials(creds))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	out := new(wrapperspb.StringValue)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := conn.Invoke(ctx, "/grpctest.Echo/Say", wrapperspb.String("offsets"), out); err != nil {
		return "", fmt.Errorf("%s: %w", mode, err)
	}
	return out.GetValue(), nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address")
	printOffsets := flag.Bool("print-offsets", false, "print the struct offsets as JSON and exit")
	mode := flag.String("serve", "grpc", "grpc (grpc-go's transport), tls or h2c (net/http with ServeHTTP)")
	serveModes := flag.Bool("serve-modes", false, "print the -serve values this build supports and exit")
	flag.Parse()
	if *serveModes {
		fmt.Println(strings.Join(modes(), " "))
		return
	}
	s := grpc.NewServer()
	s.RegisterService(&desc, &server{})
	h := health.NewServer()
	h.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, h)
	if *printOffsets {
		native, err := selfCall(s, "grpc")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		// The same offsets must hold for streams of net/http's transport (ServeHTTP): the
		// uprobes read them at both transports' status writes with one table row.
		handler, err := selfCall(s, "tls")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if handler != native {
			b, _ := json.Marshal(map[string]string{"error": "stream layout differs under ServeHTTP", "native": native, "handler": handler})
			fmt.Println(string(b))
			return
		}
		fmt.Println(native)
		return
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("listening %s\n", l.Addr())
	if err := serve(s, l, *mode); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
