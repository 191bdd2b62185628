// The gRPC test client of tests/tests/grpc.rs: drives a fixed mix over ONE connection with
// several goroutines and prints what it saw, one line per (method, status code):
// "<full method> <code number> <count>"; and on stderr the calls' summed wall time (from before
// each call began to its status), "spent_ns <full method> <code number> <ns>".
//
// Per round: Say ok; Say failing with NOT_FOUND, INVALID_ARGUMENT, UNAVAILABLE, INTERNAL;
// Say past its deadline (DEADLINE_EXCEEDED); Stream of 3 messages (OK); Stream of 2 messages
// then FAILED_PRECONDITION; Collect of 3 messages (OK) and one failing with RESOURCE_EXHAUSTED;
// an unknown method (UNIMPLEMENTED); a health check (OK).
//
// -tls speaks TLS (ALPN h2, the server's certificate not verified: the test server makes a
// self-signed one at start), for servers mounted in net/http (tests/go/grpc/server -serve tls).
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

type key struct {
	method string
	code   codes.Code
}

var (
	mu     sync.Mutex
	counts = map[key]int{}
	// Summed wall time of the calls, from before the call began to its status.
	spent = map[key]time.Duration{}
)

func record(method string, err error, began time.Time) {
	d := time.Since(began)
	mu.Lock()
	k := key{method, status.Code(err)}
	counts[k]++
	spent[k] += d
	mu.Unlock()
}

var streamDesc = grpc.StreamDesc{ServerStreams: true}
var collectDesc = grpc.StreamDesc{ClientStreams: true}

func unary(conn *grpc.ClientConn, method, v string, timeout time.Duration) {
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out := new(wrapperspb.StringValue)
	record(method, conn.Invoke(ctx, method, wrapperspb.String(v), out), began)
}

func serverStream(conn *grpc.ClientConn, v string) {
	began := time.Now()
	const m = "/grpctest.Echo/Stream"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := conn.NewStream(ctx, &streamDesc, m)
	if err != nil {
		record(m, err, began)
		return
	}
	if err := s.SendMsg(wrapperspb.String(v)); err != nil {
		record(m, err, began)
		return
	}
	if err := s.CloseSend(); err != nil {
		record(m, err, began)
		return
	}
	for {
		err := s.RecvMsg(new(wrapperspb.StringValue))
		if err == io.EOF {
			record(m, nil, began)
			return
		}
		if err != nil {
			record(m, err, began)
			return
		}
	}
}

func clientStream(conn *grpc.ClientConn, vs ...string) {
	began := time.Now()
	const m = "/grpctest.Echo/Collect"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := conn.NewStream(ctx, &collectDesc, m)
	if err != nil {
		record(m, err, began)
		return
	}
	for _, v := range vs {
		if err := s.SendMsg(wrapperspb.String(v)); err != nil {
			break // the status comes from RecvMsg
		}
	}
	_ = s.CloseSend()
	record(m, s.RecvMsg(new(wrapperspb.StringValue)), began)
}

func heldStream(conn *grpc.ClientConn) {
	began := time.Now()
	const m = "/grpctest.Echo/Collect"
	s, err := conn.NewStream(context.Background(), &collectDesc, m)
	if err != nil {
		record(m, err, began)
		return
	}
	if err := s.SendMsg(wrapperspb.String("held")); err != nil {
		record(m, err, began)
		return
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	_ = s.CloseSend()
	record(m, s.RecvMsg(new(wrapperspb.StringValue)), began)
}

func round(conn *grpc.ClientConn, h healthpb.HealthClient) {
	const say = "/grpctest.Echo/Say"
	long := 10 * time.Second
	unary(conn, say, "ok", long)
	unary(conn, say, fmt.Sprintf("code:%d", codes.NotFound), long)
	unary(conn, say, fmt.Sprintf("code:%d", codes.InvalidArgument), long)
	unary(conn, say, fmt.Sprintf("code:%d", codes.Unavailable), long)
	unary(conn, say, fmt.Sprintf("code:%d", codes.Internal), long)
	unary(conn, say, "deadline", 30*time.Millisecond)
	serverStream(conn, "n:3")
	serverStream(conn, fmt.Sprintf("n:2:code:%d", codes.FailedPrecondition))
	clientStream(conn, "a", "b", "c")
	clientStream(conn, "a", fmt.Sprintf("code:%d", codes.ResourceExhausted))
	unary(conn, "/grpctest.Echo/Nope", "x", long)
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), long)
	_, err := h.Check(ctx, &healthpb.HealthCheckRequest{})
	cancel()
	record("/grpc.health.v1.Health/Check", err, began)
}

func main() {
	addr := flag.String("addr", "", "server address")
	rounds := flag.Int("rounds", 10, "rounds of the mix")
	workers := flag.Int("concurrency", 4, "goroutines sharing the connection")
	mix := flag.String("mix", "fixed", "fixed (the mix above); unary-ok (one Say ok per round: for cost measurements); failing (3 Say UNAVAILABLE and a health check per round: a service failing behind a passing health check); held (one client stream per round, ended when stdin closes)")
	pause := flag.Duration("pause", 0, "pause of each goroutine after each round (spreads the load over time)")
	useTLS := flag.Bool("tls", false, "TLS without verifying the server's certificate")
	flag.Parse()
	creds := insecure.NewCredentials()
	if *useTLS {
		creds = credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})
	}
	conn, err := dial(*addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer conn.Close()
	h := healthpb.NewHealthClient(conn)
	began := time.Now()
	work := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < *workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				switch *mix {
				case "unary-ok":
					unary(conn, "/grpctest.Echo/Say", "ok", 10*time.Second)
				case "held":
					// One client stream held open until stdin closes: a call that outlives
					// whatever happens meanwhile (an attach).
					heldStream(conn)
				case "failing":
					for i := 0; i < 3; i++ {
						unary(conn, "/grpctest.Echo/Say", fmt.Sprintf("code:%d", codes.Unavailable), 10*time.Second)
					}
					began := time.Now()
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					_, err := h.Check(ctx, &healthpb.HealthCheckRequest{})
					cancel()
					record("/grpc.health.v1.Health/Check", err, began)
				default:
					round(conn, h)
				}
				time.Sleep(*pause)
			}
		}()
	}
	for i := 0; i < *rounds; i++ {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	fmt.Fprintf(os.Stderr, "elapsed_ns %d\n", time.Since(began).Nanoseconds())
	keys := make([]key, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].method != keys[j].method {
			return keys[i].method < keys[j].method
		}
		return keys[i].code < keys[j].code
	})
	for _, k := range keys {
		fmt.Printf("%s %d %d\n", k.method, k.code, counts[k])
		fmt.Fprintf(os.Stderr, "spent_ns %s %d %d\n", k.method, k.code, spent[k].Nanoseconds())
	}
}
