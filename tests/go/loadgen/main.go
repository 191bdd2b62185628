// Command loadgen is the HTTP/1.1 load generator of `./x bench`: stdlib only, one keep-alive
// connection per worker, a hand-written request and a minimal response parser (status line,
// headers, Content-Length body) so that the generator costs far less CPU per request than the
// server it drives and saturates it from a single core.
//
// Two modes:
//
//   - closed loop (-rate 0): every worker sends its next request as soon as the previous answer
//     is read. Gives the saturated throughput.
//   - open loop (-rate R): request i is due at start + i/R whatever happened before. A worker
//     takes the next due slot, waits for it, sends, and the latency is measured from the slot's
//     intended time, not from the moment it was actually sent: when the server (or the
//     generator) falls behind, the waiting requests are charged the delay they would have seen
//     from independent users instead of silently not being sent (coordinated omission).
//     "service" latencies (from the actual send) are reported too, and how late sends were.
//
// Requests sent during -warmup are not counted. The result is one JSON object on stdout.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

type latencies struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
}

type result struct {
	Mode       string  `json:"mode"`
	Conns      int     `json:"conns"`
	Seconds    float64 `json:"seconds"`
	TargetRate float64 `json:"target_rate,omitempty"`
	Requests   int64   `json:"requests"`
	Errors     int64   `json:"errors"`
	Rps        float64 `json:"rps"`
	// Latency in microseconds: from the intended send time (open loop) or the send (closed).
	LatencyUs latencies `json:"latency_us"`
	// Open loop only: from the actual send, and how late the sends were.
	ServiceUs  *latencies `json:"service_latency_us,omitempty"`
	SendLateUs *latencies `json:"send_late_us,omitempty"`
	// Open loop only: due slots never sent before the end (all workers busy until then).
	Unsent int64 `json:"unsent,omitempty"`
}

type worker struct {
	addr    string
	request []byte
	conn    net.Conn
	rd      *bufio.Reader
	lat     []int64
	service []int64
	late    []int64
	ok      int64
	errs    int64
}

func (w *worker) connect() error {
	if w.conn != nil {
		w.conn.Close()
	}
	c, err := net.DialTimeout("tcp", w.addr, 5*time.Second)
	if err != nil {
		w.conn = nil
		return err
	}
	w.conn = c
	w.rd = bufio.NewReaderSize(c, 16*1024)
	return nil
}

// roundTrip sends one request and reads one response; the connection is reopened after any
// error so that a broken connection costs one error, not the rest of the run.
func (w *worker) roundTrip() error {
	if w.conn == nil {
		if err := w.connect(); err != nil {
			return err
		}
	}
	if _, err := w.conn.Write(w.request); err != nil {
		w.conn.Close()
		w.conn = nil
		return err
	}
	status, err := readResponse(w.rd)
	if err != nil {
		w.conn.Close()
		w.conn = nil
		return err
	}
	if status < 200 || status > 299 {
		return fmt.Errorf("status %d", status)
	}
	return nil
}

// readResponse reads one HTTP/1.1 response with a Content-Length body and returns its status.
func readResponse(rd *bufio.Reader) (int, error) {
	line, err := rd.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	// "HTTP/1.1 200 OK\r\n"
	if len(line) < 12 || string(line[:5]) != "HTTP/" {
		return 0, fmt.Errorf("bad status line %q", line)
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, fmt.Errorf("bad status line %q", line)
	}
	length := -1
	for {
		h, err := rd.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		if len(h) <= 2 {
			break
		}
		if len(h) > 15 && strings.EqualFold(string(h[:15]), "content-length:") {
			length, err = strconv.Atoi(strings.TrimSpace(string(h[15:])))
			if err != nil {
				return 0, fmt.Errorf("bad Content-Length %q", h)
			}
		}
		if len(h) > 18 && strings.EqualFold(string(h[:18]), "transfer-encoding:") {
			return 0, errors.New("chunked responses are not supported")
		}
	}
	if length < 0 {
		return 0, errors.New("response without Content-Length")
	}
	if _, err := rd.Discard(length); err != nil {
		return 0, err
	}
	return status, nil
}

func percentiles(v []int64) latencies {
	if len(v) == 0 {
		return latencies{}
	}
	sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
	at := func(q float64) float64 {
		// Nearest rank: the smallest value with at least q of the samples at or below it.
		i := int(q*float64(len(v))+0.999999) - 1
		if i < 0 {
			i = 0
		}
		if i >= len(v) {
			i = len(v) - 1
		}
		return float64(v[i]) / 1e3
	}
	return latencies{P50: at(0.50), P90: at(0.90), P99: at(0.99), P999: at(0.999), Max: float64(v[len(v)-1]) / 1e3}
}

// tick is the pacer's period: due requests are released at most this late.
const tick = 50 * time.Microsecond

// pace releases slot i (due at start + i*interval) into the returned channel once it is due,
// until end. Go's timers cannot be used for this: while every goroutine is blocked the runtime
// sleeps in epoll_wait, whose timeout is rounded up to a whole millisecond, so sleeps shorter
// than that end up to 1 ms late (measured: 0.47 ms median). A periodic timerfd read through the
// runtime's poller wakes it at the tick instead.
func pace(start, end time.Time, interval time.Duration) (chan int64, error) {
	const clockMonotonic, tfdNonblock, tfdCloexec = 1, 0x800, 0x80000
	fd, _, errno := syscall.Syscall(syscall.SYS_TIMERFD_CREATE, clockMonotonic, tfdNonblock|tfdCloexec, 0)
	if errno != 0 {
		return nil, fmt.Errorf("timerfd_create: %w", errno)
	}
	// struct itimerspec { it_interval, it_value } of struct timespec { sec, nsec }.
	spec := [4]int64{0, int64(tick), 0, int64(tick)}
	if _, _, errno := syscall.Syscall6(syscall.SYS_TIMERFD_SETTIME, fd, 0, uintptr(unsafe.Pointer(&spec)), 0, 0, 0); errno != 0 {
		syscall.Close(int(fd))
		return nil, fmt.Errorf("timerfd_settime: %w", errno)
	}
	// Non-blocking, so os.NewFile registers it with the runtime's poller.
	timer := os.NewFile(fd, "timerfd")
	slots := make(chan int64, 1<<16)
	go func() {
		defer close(slots)
		defer timer.Close()
		var buf [8]byte
		var next int64
		for {
			now := time.Now()
			for {
				due := start.Add(time.Duration(next) * interval)
				if !due.Before(end) {
					return
				}
				if due.After(now) {
					break
				}
				slots <- next
				next++
			}
			if _, err := timer.Read(buf[:]); err != nil {
				fmt.Fprintln(os.Stderr, "loadgen: timerfd:", err)
				os.Exit(1)
			}
		}
	}()
	return slots, nil
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "server address")
	path := flag.String("path", "/items/42", "request path")
	conns := flag.Int("conns", 32, "connections (one worker each)")
	duration := flag.Duration("duration", 10*time.Second, "measured duration")
	warmup := flag.Duration("warmup", time.Second, "unmeasured time before the measured duration")
	rate := flag.Float64("rate", 0, "open loop at this many requests per second (0: closed loop)")
	flag.Parse()
	if *conns < 1 || *duration <= 0 || *rate < 0 {
		fmt.Fprintln(os.Stderr, "loadgen: -conns must be >= 1, -duration > 0, -rate >= 0")
		os.Exit(2)
	}
	request := []byte("GET " + *path + " HTTP/1.1\r\nHost: bench\r\nUser-Agent: collector-bench\r\n\r\n")

	workers := make([]*worker, *conns)
	for i := range workers {
		workers[i] = &worker{addr: *addr, request: request}
		if err := workers[i].connect(); err != nil {
			fmt.Fprintf(os.Stderr, "loadgen: connect %s: %v\n", *addr, err)
			os.Exit(1)
		}
	}

	start := time.Now()
	measureFrom := start.Add(*warmup)
	end := measureFrom.Add(*duration)
	var unsent int64
	var interval time.Duration
	var slots chan int64
	if *rate > 0 {
		interval = time.Duration(float64(time.Second) / *rate)
		if interval <= 0 {
			interval = 1
		}
		var err error
		slots, err = pace(start, end, interval)
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
	}
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Add(1)
		go func(w *worker) {
			defer wg.Done()
			if *rate == 0 {
				for {
					t0 := time.Now()
					if !t0.Before(end) {
						return
					}
					err := w.roundTrip()
					t1 := time.Now()
					if t0.Before(measureFrom) {
						continue
					}
					if err != nil {
						w.errs++
						continue
					}
					w.ok++
					w.lat = append(w.lat, int64(t1.Sub(t0)))
				}
			}
			for i := range slots {
				due := start.Add(time.Duration(i) * interval)
				sent := time.Now()
				if !sent.Before(end) {
					// The run is over before this due request could go out: it is counted
					// as unsent rather than measured against a server nobody loads any more.
					if !due.Before(measureFrom) {
						atomic.AddInt64(&unsent, 1)
					}
					continue
				}
				err := w.roundTrip()
				done := time.Now()
				if due.Before(measureFrom) {
					continue
				}
				if err != nil {
					w.errs++
					continue
				}
				w.ok++
				w.lat = append(w.lat, int64(done.Sub(due)))
				w.service = append(w.service, int64(done.Sub(sent)))
				w.late = append(w.late, int64(sent.Sub(due)))
			}
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(measureFrom)
	if elapsed < *duration {
		elapsed = *duration
	}

	res := result{Mode: "closed", Conns: *conns, Seconds: elapsed.Seconds()}
	var all, service, late []int64
	for _, w := range workers {
		res.Requests += w.ok
		res.Errors += w.errs
		all = append(all, w.lat...)
		service = append(service, w.service...)
		late = append(late, w.late...)
		if w.conn != nil {
			w.conn.Close()
		}
	}
	res.Rps = float64(res.Requests) / elapsed.Seconds()
	res.LatencyUs = percentiles(all)
	if *rate > 0 {
		res.Mode = "open"
		res.TargetRate = *rate
		s, l := percentiles(service), percentiles(late)
		res.ServiceUs, res.SendLateUs = &s, &l
		res.Unsent = atomic.LoadInt64(&unsent)
		// Slots due before the end that no worker even picked up.
		due := int64(end.Sub(measureFrom) / interval)
		picked := res.Requests + res.Errors + atomic.LoadInt64(&unsent)
		if due > picked {
			res.Unsent += due - picked
		}
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(res); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}
