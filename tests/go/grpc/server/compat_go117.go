//go:build !go1.18

package main

// any is predeclared from Go 1.18 on; the grpc-go set built with Go 1.17 needs it spelled out.
type any = interface{}
