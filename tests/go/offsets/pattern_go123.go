//go:build go1.23

package main

import (
	"net/http"
	"unsafe"
)

// patternOffset is the offset of net/http.Request.Pattern, added in Go 1.23.
func patternOffset(r *http.Request) *uintptr {
	off := unsafe.Offsetof(r.Pattern)
	return &off
}
