//go:build !go1.23

package main

import "net/http"

// patternOffset: net/http.Request has no Pattern field before Go 1.23.
func patternOffset(*http.Request) *uintptr { return nil }
