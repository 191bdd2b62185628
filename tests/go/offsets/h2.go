package main

import (
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"net/http"
	"net/http/httptest"
	"reflect"
	"unsafe"
)

// h2Layout is where net/http's own HTTP/2 server keeps a response's status, found on a live
// HTTP/2 request (TLS, ALPN h2) to a server in this process. The writer and its state are
// unexported types, so unsafe.Offsetof cannot name them: reflection finds the fields by name
// and type, and the offsets are then proven by reading back, through them, a status the
// handler wrote.
type h2Layout struct {
	// The ResponseWriter's dynamic type, e.g. *http.http2responseWriter.
	WriterType string `json:"h2_writer_type"`
	// itab.hash of that type in the ResponseWriter interface (at byte 16 of the itab; checked
	// against the type's own hash).
	WriterHash uint32 `json:"h2_writer_hash"`
	// Offset of rws in the struct the interface's data word points at.
	WriterRws uintptr `json:"h2_writer_rws"`
	// Offset of status in the writer state.
	RwsStatus uintptr `json:"h2_rws_status"`
}

// A status no handler of this program writes otherwise.
const probeStatus = 299

func h2Found(w http.ResponseWriter) (h2Layout, error) {
	var out h2Layout
	t := reflect.TypeOf(w)
	out.WriterType = t.String()
	// The struct the data word points at: the writer itself (a pointer type), or, for a
	// one-pointer wrapper struct (stored directly in the interface, Go 1.27), its pointer's.
	var writer reflect.Type
	switch {
	case t.Kind() == reflect.Ptr && t.Elem().Kind() == reflect.Struct:
		writer = t.Elem()
	case t.Kind() == reflect.Struct && t.NumField() == 1 && t.Field(0).Type.Kind() == reflect.Ptr:
		writer = t.Field(0).Type.Elem()
	default:
		return out, fmt.Errorf("HTTP/2 writer %s is neither a pointer nor a one-pointer struct", t)
	}
	rws, ok := writer.FieldByName("rws")
	if !ok || rws.Type.Kind() != reflect.Ptr || rws.Type.Elem().Kind() != reflect.Struct {
		return out, fmt.Errorf("%s has no field rws pointing at a struct", writer)
	}
	status, ok := rws.Type.Elem().FieldByName("status")
	if !ok || status.Type != reflect.TypeOf(0) {
		return out, fmt.Errorf("%s has no int field status", rws.Type.Elem())
	}
	out.WriterRws = rws.Offset
	out.RwsStatus = status.Offset

	iface := (*[2]unsafe.Pointer)(unsafe.Pointer(&w))
	out.WriterHash = *(*uint32)(unsafe.Pointer(uintptr(iface[0]) + 16))
	var e interface{} = w
	eface := (*[2]unsafe.Pointer)(unsafe.Pointer(&e))
	// The type descriptor starts with its size and pointer-bytes words, then the hash.
	if typeHash := *(*uint32)(unsafe.Pointer(uintptr(eface[0]) + 16)); typeHash != out.WriterHash {
		return out, fmt.Errorf("itab hash %#x != type hash %#x: the itab layout is not the one the uprobes read", out.WriterHash, typeHash)
	}
	if out.WriterHash == 0 {
		return out, fmt.Errorf("%s hashes to 0, which the collector reads as unknown", t)
	}

	w.WriteHeader(probeStatus)
	state := *(*unsafe.Pointer)(unsafe.Pointer(uintptr(iface[1]) + out.WriterRws))
	if got := *(*int)(unsafe.Pointer(uintptr(state) + out.RwsStatus)); got != probeStatus {
		return out, fmt.Errorf("status read through the offsets is %d, the handler wrote %d", got, probeStatus)
	}
	return out, nil
}

func h2Offsets() h2Layout {
	type result struct {
		layout h2Layout
		err    error
	}
	found := make(chan result, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 {
			found <- result{err: fmt.Errorf("request over %s, not HTTP/2", r.Proto)}
			return
		}
		l, err := h2Found(w)
		found <- result{l, err}
	}))
	srv.EnableHTTP2 = true
	srv.Config.ErrorLog = log.New(ioutil.Discard, "", 0)
	srv.StartTLS()
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		fail("HTTP/2 request: %v", err)
	}
	io.Copy(ioutil.Discard, resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != probeStatus {
		fail("HTTP/2 request answered %s %d, expected HTTP/2.0 %d", resp.Proto, resp.StatusCode, probeStatus)
	}
	r := <-found
	if r.err != nil {
		fail("%v", r.err)
	}
	return r.layout
}
