//go:build go1.24

package main

import "net/http"

// enableH2C serves HTTP/2 with prior knowledge on the plain listener next to HTTP/1.1, through
// net/http's own HTTP/2 server (Server.Protocols, Go 1.24).
func enableH2C(srv *http.Server) {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv.Protocols = &p
}
