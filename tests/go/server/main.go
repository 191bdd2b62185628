// Command server is the test target for the collector's Go net/http uprobes: a tiny
// stdlib-only HTTP/1.1 server with one route per outcome the probes must tell apart.
//
// It prints "listening on ADDR" once it accepts connections, so a test can start it on port 0.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"
)

// Requests parked by /hold, by key.
type hold struct {
	released chan struct{}
	waiting  int
}

var (
	holdsMu sync.Mutex
	holds   = map[string]*hold{}
)

// holdFor returns the hold of key; holdsMu must be held.
func holdFor(key string) *hold {
	h, ok := holds[key]
	if !ok {
		h = &hold{released: make(chan struct{})}
		holds[key] = h
	}
	return h
}

// releaseHold waits until `after` requests wait on key (at most 20 s), then releases them
// all; false when they did not arrive in time.
func releaseHold(key string, after int) bool {
	deadline := time.Now().Add(20 * time.Second)
	for {
		holdsMu.Lock()
		h := holdFor(key)
		if h.waiting >= after {
			select {
			case <-h.released:
			default:
				close(h.released)
			}
			holdsMu.Unlock()
			return true
		}
		holdsMu.Unlock()
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
}

func main() {
	addr := flag.String("listen", "127.0.0.1:0", "address to listen on")
	cert := flag.String("tls-cert", "", "serve HTTPS with this PEM certificate (and -tls-key)")
	key := flag.String("tls-key", "", "PEM private key for -tls-cert")
	h2c := flag.Bool("h2c", false, "also serve HTTP/2 without TLS (h2c, prior knowledge): Go >= 1.24's Server.Protocols")
	flag.Parse()

	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/err", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "unavailable", http.StatusServiceUnavailable)
	})
	mux.HandleFunc("/panic", func(w http.ResponseWriter, r *http.Request) {
		panic("test panic")
	})
	// Writes nothing: net/http sends 200 after the handler returns.
	mux.HandleFunc("/empty", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
		if err != nil || ms < 0 || ms > 60000 {
			http.Error(w, "bad ms", http.StatusBadRequest)
			return
		}
		time.Sleep(time.Duration(ms) * time.Millisecond)
		fmt.Fprintln(w, "slow", ms)
	})
	// Streams n chunks of 1000 bytes, flushing each: a chunked response (no Content-Length).
	mux.HandleFunc("/chunked", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("n"))
		if err != nil || n < 0 || n > 10000 {
			http.Error(w, "bad n", http.StatusBadRequest)
			return
		}
		chunk := make([]byte, 1000)
		for i := range chunk {
			chunk[i] = 'a' + byte(i%26)
		}
		for i := 0; i < n; i++ {
			w.Write(chunk)
			w.(http.Flusher).Flush()
		}
	})
	// Reads the whole request body (sending "100 Continue" first when the client asked for
	// it) and answers with its length.
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, "read", http.StatusBadRequest)
			return
		}
		fmt.Fprintln(w, len(b))
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "healthy")
	})
	// Writes the status (?code=) from a goroutine of its own, which the handler waits for:
	// a status the serving goroutine never wrote itself.
	mux.HandleFunc("/status-async", func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(r.URL.Query().Get("code"))
		if err != nil || code < 200 || code > 599 {
			http.Error(w, "bad code", http.StatusBadRequest)
			return
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			w.WriteHeader(code)
			fmt.Fprintln(w, "async", code)
		}()
		<-done
	})
	// Stays in flight until /release?key= with the same key, or until the client goes away;
	// then answers 200 ("released") or writes nothing (client gone).
	mux.HandleFunc("/hold", func(w http.ResponseWriter, r *http.Request) {
		holdsMu.Lock()
		h := holdFor(r.URL.Query().Get("key"))
		h.waiting++
		holdsMu.Unlock()
		select {
		case <-h.released:
			fmt.Fprintln(w, "released")
		case <-r.Context().Done():
		}
	})
	// Releases the holds of ?key= once ?after= of them (default 0) are waiting: a test's
	// requests are then all in flight at once, whatever the scheduling. 504 if they never
	// arrive.
	mux.HandleFunc("/release", func(w http.ResponseWriter, r *http.Request) {
		after, err := strconv.Atoi(r.URL.Query().Get("after"))
		if err != nil {
			after = 0
		}
		if !releaseHold(r.URL.Query().Get("key"), after) {
			http.Error(w, "holders did not arrive", http.StatusGatewayTimeout)
			return
		}
		fmt.Fprintln(w, "released")
	})
	// Ends the serving goroutine with runtime.Goexit: the request never returns from
	// ServeHTTP, net/http's deferred calls close the connection without a response.
	mux.HandleFunc("/goexit", func(w http.ResponseWriter, r *http.Request) {
		runtime.Goexit()
	})
	registerItems(mux)

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stdout, "listening on %s\n", ln.Addr())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if *h2c {
		enableH2C(srv)
	}
	if *cert != "" {
		// TLS (and HTTP/2 through ALPN) sits below ServeHTTP.
		log.Fatal(srv.ServeTLS(ln, *cert, *key))
	}
	log.Fatal(srv.Serve(ln))
}
