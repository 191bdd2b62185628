//go:build !grpcdial

package main

import "google.golang.org/grpc"

// dial: grpc.NewClient (grpc-go ≥ 1.63); dial_grpcdial.go for older versions.
func dial(target string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	return grpc.NewClient(target, opts...)
}
