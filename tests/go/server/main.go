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
	"strconv"
	"time"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:0", "address to listen on")
	cert := flag.String("tls-cert", "", "serve HTTPS with this PEM certificate (and -tls-key)")
	key := flag.String("tls-key", "", "PEM private key for -tls-cert")
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
	registerItems(mux)

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stdout, "listening on %s\n", ln.Addr())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if *cert != "" {
		// TLS (and HTTP/2 through ALPN) sits below ServeHTTP.
		log.Fatal(srv.ServeTLS(ln, *cert, *key))
	}
	log.Fatal(srv.Serve(ln))
}
