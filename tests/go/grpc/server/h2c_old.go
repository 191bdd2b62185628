//go:build !go1.24

package main

import "net/http"

// cleartextHTTP2: net/http has no cleartext HTTP/2 of its own before Go 1.24.
func cleartextHTTP2(*http.Server) bool { return false }
