// Command h2client sends HTTP/2 requests to the Go test server (tests/go/server) and prints,
// as one JSON object, what each request got: status (0 when the stream was reset, as after a
// handler panic), the protocol, and the client-side duration. Every request must be answered
// over HTTP/2 (over HTTP/1.1 with -http1): a response over another protocol fails the run.
//
// All requests share one connection (HTTP/2 multiplexing), -conc of them in flight at once.
// TLS with ALPN h2 (certificate not verified: the test's own) or, with -h2c, HTTP/2 over
// plain TCP with prior knowledge (Go >= 1.24's Transport.Protocols); -http1: HTTPS over
// HTTP/1.1 keep-alive connections instead.
//
// Requests are arguments METHOD:PATH:COUNT, e.g. GET:/ok:5 "GET:/slow?ms=300:1".
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

type result struct {
	Method string `json:"method"`
	Path   string `json:"path"`
	Status int    `json:"status"`
	Proto  string `json:"proto"`
	Error  string `json:"error,omitempty"`
	Micros int64  `json:"micros"`
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "h2client: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	base := flag.String("base", "", "server address, host:port")
	h2c := flag.Bool("h2c", false, "HTTP/2 over plain TCP (prior knowledge) instead of TLS")
	conc := flag.Int("conc", 4, "requests in flight at once")
	http1 := flag.Bool("http1", false, "HTTP/1.1 over TLS (keep-alive) instead of HTTP/2")
	flag.Parse()

	type job struct{ method, path string }
	var jobs []job
	for _, a := range flag.Args() {
		parts := strings.SplitN(a, ":", 3)
		if len(parts) != 3 {
			fail("request %q is not METHOD:PATH:COUNT", a)
		}
		// The path may hold ':' (none of the test server's do); the count is the last field.
		i := strings.LastIndex(a, ":")
		n, err := strconv.Atoi(a[i+1:])
		if err != nil || n < 0 {
			fail("request %q: bad count", a)
		}
		for k := 0; k < n; k++ {
			jobs = append(jobs, job{parts[0], a[len(parts[0])+1 : i]})
		}
	}

	var p http.Protocols
	scheme := "https"
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: true},
		MaxIdleConnsPerHost: 1,
	}
	if *h2c {
		p.SetUnencryptedHTTP2(true)
		scheme = "http"
	} else if *http1 {
		p.SetHTTP1(true)
	} else {
		p.SetHTTP2(true)
	}
	tr.Protocols = &p
	client := &http.Client{Transport: tr, Timeout: 60 * time.Second}

	results := make([]result, len(jobs))
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				j := jobs[i]
				req, err := http.NewRequest(j.method, scheme+"://"+*base+j.path, nil)
				if err != nil {
					fail("%v", err)
				}
				start := time.Now()
				resp, err := client.Do(req)
				r := result{Method: j.method, Path: j.path}
				if err != nil {
					r.Error = err.Error()
				} else {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					r.Status, r.Proto = resp.StatusCode, resp.Proto
					if err != nil {
						// The stream was reset after the head (a handler that panicked
						// after writing): not a complete response.
						r.Error = err.Error()
					}
					if want := map[bool]int{true: 1, false: 2}[*http1]; resp.ProtoMajor != want {
						fail("%s %s answered over %s, not HTTP/%d", j.method, j.path, resp.Proto, want)
					}
				}
				r.Micros = time.Since(start).Microseconds()
				results[i] = r
			}
		}()
	}
	for i := range jobs {
		next <- i
	}
	close(next)
	wg.Wait()
	if err := json.NewEncoder(os.Stdout).Encode(map[string]any{"results": results}); err != nil {
		fail("%v", err)
	}
}
