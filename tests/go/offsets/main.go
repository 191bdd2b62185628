// Command offsets prints, as one JSON object, the byte offsets and sizes of the Go struct
// fields the collector's net/http uprobes read, as laid out by the Go toolchain that built
// it (net/http's HTTP/2 writer from a live request: h2.go). `cargo xtask go-offsets` builds and runs it with every Go release in tests/go/versions
// and writes collector/src/probes/go_http/offsets_table.json from the results.
//
// It also checks each field's type, so a field that changed type (and would be read wrong
// by the uprobes) fails the generation instead of producing a plausible offset.
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"runtime"
	"unsafe"
)

type output struct {
	GoVersion         string   `json:"go_version"`
	GoArch            string   `json:"goarch"`
	RequestSize       uintptr  `json:"request_size"`
	RequestMethod     uintptr  `json:"request_method"`
	RequestURL        uintptr  `json:"request_url"`
	RequestProtoMajor uintptr  `json:"request_proto_major"`
	RequestPattern    *uintptr `json:"request_pattern"`
	RequestTLS        uintptr  `json:"request_tls"`
	URLSize           uintptr  `json:"url_size"`
	URLPath           uintptr  `json:"url_path"`
	h2Layout
}

// checkType fails unless struct type t has a field name of type want.
func checkType(t reflect.Type, name string, want reflect.Type) {
	f, ok := t.FieldByName(name)
	if !ok {
		fail("%s has no field %s", t, name)
	}
	if f.Type != want {
		fail("%s.%s is %s, expected %s", t, name, f.Type, want)
	}
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "offsets: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	var r http.Request
	var u url.URL
	req := reflect.TypeOf(r)
	str := reflect.TypeOf("")
	checkType(req, "Method", str)
	checkType(req, "URL", reflect.TypeOf(&u))
	checkType(req, "ProtoMajor", reflect.TypeOf(0))
	checkType(req, "TLS", reflect.TypeOf(r.TLS))
	if reflect.TypeOf(r.TLS).Kind() != reflect.Ptr {
		fail("net/http.Request.TLS is %s, expected a pointer", reflect.TypeOf(r.TLS))
	}
	checkType(reflect.TypeOf(u), "Path", str)
	out := output{
		GoVersion:         runtime.Version(),
		GoArch:            runtime.GOARCH,
		RequestSize:       unsafe.Sizeof(r),
		RequestMethod:     unsafe.Offsetof(r.Method),
		RequestURL:        unsafe.Offsetof(r.URL),
		RequestProtoMajor: unsafe.Offsetof(r.ProtoMajor),
		RequestPattern:    patternOffset(&r),
		RequestTLS:        unsafe.Offsetof(r.TLS),
		URLSize:           unsafe.Sizeof(u),
		URLPath:           unsafe.Offsetof(u.Path),
		h2Layout:          h2Offsets(),
	}
	if out.RequestPattern != nil {
		checkType(req, "Pattern", str)
	} else if _, ok := req.FieldByName("Pattern"); ok {
		fail("net/http.Request has a Pattern field but this Go version was not expected to")
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail("%v", err)
	}
}
