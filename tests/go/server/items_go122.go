//go:build go1.22

// go.mod says go 1.21, which would keep the Go 1.21 ServeMux on newer toolchains.
//go:debug httpmuxgo121=0

package main

import (
	"fmt"
	"net/http"
)

// registerItems uses a Go 1.22 method-and-wildcard pattern (Request.Pattern on Go >= 1.23).
func registerItems(mux *http.ServeMux) {
	mux.HandleFunc("GET /items/{id}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "item", r.PathValue("id"))
	})
}
