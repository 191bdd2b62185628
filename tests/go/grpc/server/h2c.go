//go:build go1.24

package main

import "net/http"

// cleartextHTTP2 turns on net/http's HTTP/2 with prior knowledge over cleartext (Go >= 1.24).
func cleartextHTTP2(s *http.Server) bool {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	s.Protocols = &p
	return true
}
