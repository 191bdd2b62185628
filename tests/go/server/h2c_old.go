//go:build !go1.24

package main

import (
	"log"
	"net/http"
)

// enableH2C: net/http serves h2c only since Go 1.24 (Server.Protocols).
func enableH2C(*http.Server) {
	log.Fatal("-h2c needs Go 1.24 or newer (net/http.Server.Protocols)")
}
