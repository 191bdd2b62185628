//go:build !go1.22

package main

import (
	"fmt"
	"net/http"
	"strings"
)

// registerItems is the Go 1.21 equivalent of "GET /items/{id}".
func registerItems(mux *http.ServeMux) {
	mux.HandleFunc("/items/", func(w http.ResponseWriter, r *http.Request) {
		id := strings.TrimPrefix(r.URL.Path, "/items/")
		if r.Method != http.MethodGet || id == "" || strings.Contains(id, "/") {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "item", id)
	})
}
